"""A real HTTP server on 127.0.0.1 and generators of small archives in the real datasets' layouts."""
import io
import json
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


class FileServer:
    """Serves `files` ({"/path": bytes}) with Range support; `drop[path] = n` closes the
    connection after n body bytes on the next request for path; `ranges=False` ignores Range."""

    def __init__(self, files=None):
        self.files, self.drop, self.ranges, self.requests = dict(files or {}), {}, True, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, dict(self.headers)))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and server.ranges:
                    start, status = int(rng.removeprefix("bytes=").split("-")[0]), 206
                    if start >= len(data):
                        self.send_error(416)
                        return
                self.send_response(status)
                self.send_header("Content-Length", str(len(data) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                cut = server.drop.pop(self.path, None)
                if cut is not None:
                    self.wfile.write(data[start:start + cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def paths(self):
        return [p for p, _ in self.requests]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def picture(seed, size=(250, 250), fmt="JPEG"):
    """A smooth, distinct image (compresses like a photo, unlike noise) as encoded bytes."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    a, b, c = rng.uniform(1, 6, 3)
    arr = np.stack([np.sin(a * x + b * y), np.cos(b * x - c * y), np.sin(c * x * y + a)], -1)
    arr = ((arr + 1) * 127.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def tar_bytes(members):
    """A .tgz holding {name: bytes} in the given order (names kept verbatim, even unsafe ones)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def lfw_members(people=3, per_person=3):
    """lfw/<Name>/<Name>_0001.jpg ... as in lfw.tgz (250x250 JPEG)."""
    names = ["Aaron_Eckhart", "Zico", "Ziwang_Xu", "Abdullah_Gul"][:people]
    return {f"lfw/{n}/{n}_{i + 1:04d}.jpg": picture(hash((n, i)) % 2**32) for n in names for i in range(per_person)}


def ddragon_files(version="16.1.1", splash_size=(243, 143)):
    """Data Dragon's layout: versions, champion summary (no skins), per-champion skins, splash JPEGs."""
    champs = {"Garen": [0, 1, 22], "MonkeyKing": [0, 5], "Teemo": [0, 4]}
    names = {"MonkeyKing": "Wukong"}
    files = {"/api/versions.json": json.dumps(["16.2.1", version, "15.24.1"]).encode()}
    summary = {cid: {"id": cid, "key": str(i + 1), "name": names.get(cid, cid)} for i, cid in enumerate(champs)}
    files[f"/cdn/{version}/data/en_US/champion.json"] = json.dumps(
        {"type": "champion", "version": version, "data": summary}).encode()
    for i, (cid, nums) in enumerate(champs.items()):
        skins = [{"id": f"{i}{n:03d}", "num": n, "name": "default" if n == 0 else f"skin {n}", "chromas": False}
                 for n in nums]
        files[f"/cdn/{version}/data/en_US/champion/{cid}.json"] = json.dumps(
            {"data": {cid: {**summary[cid], "skins": skins}}}).encode()
        for n in nums:
            files[f"/cdn/img/champion/splash/{cid}_{n}.jpg"] = picture(100 * i + n, splash_size)
    return files
