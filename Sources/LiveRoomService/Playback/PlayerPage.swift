/// The embedded web player: one page for every room. It reads the room id from its path and
/// the viewer token from `?t=`, shows the title and whether the room is live, and plays with
/// the browser's own HLS where it has it, else the fMP4 stream through Media Source Extensions
/// (`?mode=hls` or `?mode=mse` chooses). It reconnects whenever the stream ends or fails.
enum PlayerPage {
    static let html = #"""
    <!doctype html>
    <html lang="en">
    <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>LiveRoom</title>
    <style>
      body { margin: 0; background: #111; color: #eee; font: 16px system-ui, sans-serif; }
      header { display: flex; gap: 12px; align-items: center; padding: 8px 12px; }
      h1 { font-size: 18px; margin: 0; }
      #status { padding: 2px 8px; border-radius: 4px; background: #555; font-size: 14px; }
      #status.live { background: #c0392b; }
      #message { padding: 0 12px; color: #f5b041; min-height: 1.2em; }
      video { display: block; width: 100%; max-height: calc(100vh - 72px); background: #000; }
    </style>
    </head>
    <body>
    <header><h1 id="title">LiveRoom</h1><span id="status">connecting</span></header>
    <div id="message"></div>
    <video id="video" muted autoplay playsinline controls></video>
    <script>
    "use strict";
    (() => {
      const room = decodeURIComponent(location.pathname.split("/").pop());
      const params = new URLSearchParams(location.search);
      const query = params.has("t") ? "?t=" + encodeURIComponent(params.get("t")) : "";
      const root = location.pathname.replace(/\/play\/[^/]*$/, "");
      const video = document.getElementById("video");
      const statusEl = document.getElementById("status");
      const messageEl = document.getElementById("message");
      const nativeHLS = video.canPlayType("application/vnd.apple.mpegurl") !== "";
      const mode = params.get("mode") || (nativeHLS || !window.MediaSource ? "hls" : "mse");
      document.body.dataset.mode = mode;
      let playing = false;

      const show = (status, message) => {
        statusEl.textContent = status === "live" ? "live" : status === "not_started" ? "not started" : status;
        statusEl.className = status;
        messageEl.textContent = message || "";
      };

      async function info() {
        const res = await fetch(`${root}/live/${encodeURIComponent(room)}.json${query}`, { cache: "no-store" });
        if (!res.ok) throw new Error(`${res.status}: ${(await res.text()).slice(0, 300)}`);
        return res.json();
      }

      async function playMSE(mime) {
        const source = new MediaSource();
        video.src = URL.createObjectURL(source);
        await new Promise((resolve) => source.addEventListener("sourceopen", resolve, { once: true }));
        const buffer = source.addSourceBuffer(mime);
        const pending = [];
        const append = () => {
          if (buffer.updating || pending.length === 0) return;
          buffer.appendBuffer(pending.shift());
        };
        buffer.addEventListener("updateend", () => {
          const b = video.buffered;
          if (b.length > 0) {
            const start = b.start(0), end = b.end(b.length - 1);
            // Join at the live edge, and catch up after a stall.
            if (video.currentTime < start || end - video.currentTime > 4) video.currentTime = Math.max(start, end - 0.5);
            if (!buffer.updating && video.currentTime - start > 60) { buffer.remove(start, video.currentTime - 30); return; }
          }
          if (video.paused) video.play().catch(() => {});
          append();
        });
        const res = await fetch(`${root}/live/${encodeURIComponent(room)}.mp4${query}`, { cache: "no-store" });
        if (!res.ok) throw new Error(`${res.status}: ${(await res.text()).slice(0, 300)}`);
        const reader = res.body.getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          pending.push(value);
          append();
        }
      }

      function playHLS() {
        return new Promise((resolve, reject) => {
          video.src = `${root}/live/${encodeURIComponent(room)}/index.m3u8${query}`;
          video.addEventListener("error", () => reject(new Error("the player stopped: " + (video.error && video.error.message))), { once: true });
          video.addEventListener("ended", resolve, { once: true });
          video.play().catch(() => {});
        });
      }

      async function loop() {
        for (;;) {
          try {
            const room = await info();
            document.getElementById("title").textContent = room.title;
            document.title = room.title + " - LiveRoom";
            show(room.status, room.unsupported ? "this stream cannot be played in a browser: " + room.unsupported : "");
            if (room.status === "live" && !room.unsupported && (mode === "hls" || room.mime)) {
              playing = true;
              if (mode === "hls") await playHLS(); else await playMSE(room.mime);
              show("not_started", "the stream ended; waiting for it to start again");
            }
          } catch (error) {
            show(playing ? "reconnecting" : "waiting", String(error.message || error));
          }
          playing = false;
          await new Promise((resolve) => setTimeout(resolve, 2000));
        }
      }
      loop();
    })();
    </script>
    </body>
    </html>
    """#
}
