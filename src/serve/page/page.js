// hrk's page. A photo (dropped or picked) goes to POST v1/landmarks and its faces are drawn over it;
// the camera streams JPEG frames over the WebSocket v1/live (one frame in flight, at most
// MAX_FPS a second) and each answer's tracked faces are drawn over the frame that was sent.
// What was drawn last stays in `window.hrkLast` (and the canvas's data-* attributes), so that a
// test, or a curious user in the console, reads exactly what is on the canvas.
"use strict";
(() => {
  const MAX_FPS = 15;
  const JPEG_QUALITY = 0.85;
  // Options in the page's own query (e.g. /?min_face=40) go with every request, as their query.
  const QUERY = window.location.search;
  const LIVE_STATUS = "Camera on: faces are tracked and their landmarks smoothed on the server.";
  const COLORS = ["#00e676", "#ff4081", "#40c4ff", "#ffd740", "#b388ff", "#ff6e40"];

  const $ = (id) => document.getElementById(id);
  const view = $("view");
  const ctx = view.getContext("2d");
  const keyField = $("key");
  const cameraButton = $("camera");
  const video = $("video");

  window.hrkLast = null;

  function setStatus(text, isError = false) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", isError);
  }

  // ---- the API key: a bearer header for HTTP, the first message for the WebSocket ----------------
  keyField.value = sessionStorage.getItem("hrk-key") || "";
  keyField.addEventListener("input", () => sessionStorage.setItem("hrk-key", keyField.value));
  const apiKey = () => keyField.value.trim();

  const authHeader = () => (apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {});

  // The photo as a multipart form: its file name becomes the JSON's "image".
  function form(file) {
    const data = new FormData();
    data.append("image", file, file.name);
    return data;
  }

  function explainFailure(status, body) {
    const why = (body && body.error) || `HTTP ${status}`;
    if (status === 401) {
      keyField.focus();
      return `${why} (this server needs an API key: enter it above)`;
    }
    return why;
  }

  // ---- drawing ----------------------------------------------------------------------------------
  // Draws `source` (an image or a frame) at its own size and the faces of `result` (the API's JSON)
  // over it, and records what was drawn.
  function draw(source, result, mode) {
    const width = source.width, height = source.height;
    if (view.width !== width || view.height !== height) {
      view.width = width;
      view.height = height;
    }
    ctx.drawImage(source, 0, 0, width, height);
    const line = Math.max(1, Math.round(Math.max(width, height) / 400));
    const radius = Math.max(1.5, line * 1.2);
    const drawn = [];
    result.faces.forEach((face, i) => {
      const id = face.id === undefined ? null : face.id;
      const color = COLORS[(id === null ? i : id) % COLORS.length];
      const [x1, y1, x2, y2] = face.box;
      ctx.lineWidth = line;
      ctx.strokeStyle = color;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const tag = [id === null ? null : `#${id}`, face.score == null ? null : face.score.toFixed(2)]
        .filter((t) => t !== null).join(" ");
      if (tag) {
        ctx.font = `${Math.max(11, line * 7)}px system-ui, sans-serif`;
        ctx.fillStyle = color;
        ctx.fillText(tag, x1, Math.max(y1 - line * 2, 10));
      }
      ctx.fillStyle = color;
      const landmarks = [];
      for (const [x, y] of face.landmarks) {
        ctx.beginPath();
        ctx.arc(x, y, radius, 0, 2 * Math.PI);
        ctx.fill();
        landmarks.push([x, y]);
      }
      drawn.push({ id, box: [x1, y1, x2, y2], landmarks });
    });
    view.dataset.faces = String(drawn.length);
    window.hrkLast = { mode, image: result.image, width, height, frame: result.frame, faces: drawn, response: result };
  }

  // ---- a photo ----------------------------------------------------------------------------------
  async function sendPhoto(file) {
    stopCamera();
    $("fps").textContent = "";
    document.body.dataset.state = "busy";
    setStatus(`Sending ${file.name}…`);
    try {
      const [bitmap, response] = await Promise.all([
        createImageBitmap(file),
        fetch(`v1/landmarks${QUERY}`, { method: "POST", headers: authHeader(), body: form(file) }),
      ]);
      const body = await response.json().catch(() => null);
      if (!response.ok || !body) {
        throw new Error(explainFailure(response.status, body));
      }
      draw(bitmap, body, "photo");
      const n = body.faces.length;
      setStatus(`${file.name}: ${n} face${n === 1 ? "" : "s"}.`);
      document.body.dataset.state = "done";
    } catch (e) {
      setStatus(`${file.name}: ${e.message}`, true);
      document.body.dataset.state = "error";
    }
  }

  $("photo").addEventListener("change", (ev) => {
    const file = ev.target.files[0];
    if (file) sendPhoto(file);
    ev.target.value = "";
  });

  const stage = document.body;
  stage.addEventListener("dragover", (ev) => {
    ev.preventDefault();
    $("stage").classList.add("dragging");
  });
  stage.addEventListener("dragleave", () => $("stage").classList.remove("dragging"));
  stage.addEventListener("drop", (ev) => {
    ev.preventDefault();
    $("stage").classList.remove("dragging");
    const file = [...ev.dataTransfer.files].find((f) => f.type.startsWith("image/"));
    if (file) sendPhoto(file);
    else setStatus("That was not an image.", true);
  });

  // ---- the camera -------------------------------------------------------------------------------
  // One live session: the camera stream, its WebSocket, the frame in flight and the answer times.
  let live = null;

  function streamUrl() {
    const url = new URL(`v1/live${QUERY}`, window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  function showFps() {
    const times = live.answered;
    const span = times.length > 1 ? (times[times.length - 1] - times[0]) / 1000 : 0;
    const fps = span > 0 ? (times.length - 1) / span : 0;
    $("fps").textContent = `${fps.toFixed(1)} frames/s`;
    $("fps").dataset.fps = fps.toFixed(2);
  }

  // Sends the next frame when none is in flight and the rate allows it.
  async function pump(session) {
    if (live !== session || session.inFlight || session.ws.readyState !== WebSocket.OPEN) return;
    const wait = session.lastSent + 1000 / MAX_FPS - performance.now();
    if (wait > 0) {
      setTimeout(() => pump(session), wait);
      return;
    }
    if (video.readyState < 2 || !video.videoWidth) {
      setTimeout(() => pump(session), 50);
      return;
    }
    session.lastSent = performance.now();
    const frame = await createImageBitmap(video);
    session.inFlight = frame;
    const grab = session.grab;
    grab.width = frame.width;
    grab.height = frame.height;
    grab.getContext("2d").drawImage(frame, 0, 0);
    grab.toBlob((blob) => {
      if (live === session && session.ws.readyState === WebSocket.OPEN && blob) session.ws.send(blob);
    }, "image/jpeg", JPEG_QUALITY);
  }

  function onAnswer(session, text) {
    const msg = JSON.parse(text);
    if (msg.error && msg.frame === undefined) {
      // Refused before the first frame (the key): the server closes the stream.
      setStatus(`Camera: ${msg.error}`, true);
      if (/key/i.test(msg.error)) keyField.focus();
      stopCamera();
      return;
    }
    if (msg.ready) {
      setStatus(LIVE_STATUS);
      document.body.dataset.state = "live";
      pump(session);
      return;
    }
    const frame = session.inFlight;
    session.inFlight = null;
    if (msg.error) {
      // One frame failed (busy server, unreadable frame): the stream goes on.
      setStatus(`Frame ${msg.frame}: ${msg.error}`, true);
    } else if (frame) {
      draw(frame, msg, "live");
      if ($("status").classList.contains("error")) setStatus(LIVE_STATUS);
    }
    if (frame) frame.close();
    session.frames += 1;
    view.dataset.frames = String(session.frames);
    session.answered.push(performance.now());
    if (session.answered.length > 2 * MAX_FPS) session.answered.shift();
    showFps();
    pump(session);
  }

  async function startCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setStatus("No camera here: browsers allow it on https:// or http://localhost only.", true);
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    } catch (e) {
      setStatus(`Camera: ${e.message}`, true);
      return;
    }
    video.srcObject = stream;
    await video.play();
    const ws = new WebSocket(streamUrl());
    const session = { stream, ws, grab: document.createElement("canvas"), inFlight: null, lastSent: 0, frames: 0, answered: [] };
    live = session;
    view.dataset.frames = "0";
    cameraButton.textContent = "Stop camera";
    cameraButton.classList.add("on");
    setStatus("Connecting…");
    ws.onopen = () => ws.send(JSON.stringify({ key: apiKey() || null, fps: MAX_FPS }));
    ws.onmessage = (ev) => {
      if (live === session) onAnswer(session, ev.data);
    };
    ws.onclose = (ev) => {
      if (live !== session) return;
      setStatus(`Camera stream closed${ev.reason ? `: ${ev.reason}` : ""}.`, !ev.wasClean || ev.code !== 1000);
      stopCamera();
    };
  }

  function stopCamera() {
    if (!live) return;
    const session = live;
    live = null;
    session.stream.getTracks().forEach((t) => t.stop());
    if (session.ws.readyState <= WebSocket.OPEN) session.ws.close(1000, "camera stopped");
    if (session.inFlight) session.inFlight.close();
    video.srcObject = null;
    cameraButton.textContent = "Camera";
    cameraButton.classList.remove("on");
    // The last rate stays shown (with the last frame) until a photo replaces them.
    if (document.body.dataset.state === "live") document.body.dataset.state = "idle";
  }

  cameraButton.addEventListener("click", () => {
    if (!live) {
      startCamera();
      return;
    }
    stopCamera();
    setStatus("Camera off: the last frame and rate stay shown.");
  });
})();
