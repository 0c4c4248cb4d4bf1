// The page of `avatar serve`: one session, WebRTC in and out, audio files by HTTP (avatar/serve/server.py's API).
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const state = { pc: null, id: null, timer: null, mic: null };

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function api(method, path, body, contentType) {
  const init = { method, headers: headers(contentType ? { "Content-Type": contentType } : {}) };
  if (body !== undefined) init.body = contentType === "application/json" ? JSON.stringify(body) : body;
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({ error: "HTTP " + r.status }));
  if (!r.ok) throw new Error(data.error || "HTTP " + r.status);
  return data;
}

function show(msg) { $("status").textContent = msg; }

async function loadAvatars() {
  const { avatars } = await api("GET", "api/avatars");
  $("avatar").innerHTML = "";
  for (const a of avatars) {
    const o = document.createElement("option");
    o.value = a.name;
    o.textContent = `${a.name} (${a.width}x${a.height})`;
    $("avatar").appendChild(o);
  }
}

function waitIce(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", check); resolve(); } };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 2000); // loopback/LAN: host candidates are enough
  });
}

async function start() {
  $("start").disabled = true;
  try {
    const s = await api("POST", "api/sessions", { avatar: $("avatar").value }, "application/json");
    state.id = s.id;
    const pc = (state.pc = new RTCPeerConnection());
    const stream = new MediaStream();
    pc.ontrack = (e) => { stream.addTrack(e.track); $("video").srcObject = stream; };
    pc.onconnectionstatechange = () => { if (pc.connectionState === "failed") stop(); };
    if ($("mic").checked) {
      state.mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
      pc.addTransceiver(state.mic.getAudioTracks()[0], { direction: "sendrecv" });
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
    pc.addTransceiver("video", { direction: "recvonly" });
    await pc.setLocalDescription(await pc.createOffer());
    await waitIce(pc);
    const answer = await api("POST", `api/sessions/${s.id}/offer`, { sdp: pc.localDescription.sdp, type: "offer" }, "application/json");
    await pc.setRemoteDescription(answer);
    $("interrupt").disabled = $("stop").disabled = false;
    state.timer = setInterval(poll, 1000);
  } catch (e) {
    show("error: " + e.message);
    await stop();
  }
}

async function poll() {
  if (!state.id) return;
  try {
    const s = await api("GET", `api/sessions/${state.id}`);
    show(`${s.talking ? "talking" : "idle"} | ${s.fps_sent} frames/s | sent ${s.frames_sent}, dropped ${s.frames_dropped}` +
         ` | queued ${s.queued_speech_s} s | latency p50 ${s.latency_p50_ms ?? "-"} ms, p95 ${s.latency_p95_ms ?? "-"} ms` +
         ` | A/V ${s.av_offset_ms === null ? "-" : s.av_offset_ms.toFixed(1)} ms`);
  } catch (e) {
    show("session ended: " + e.message);
    await stop();
  }
}

async function stop() {
  clearInterval(state.timer);
  const id = state.id;
  state.id = null;
  if (id) await api("DELETE", `api/sessions/${id}`).catch(() => {});
  if (state.pc) state.pc.close();
  if (state.mic) state.mic.getTracks().forEach((t) => t.stop());
  state.pc = state.mic = null;
  $("start").disabled = false;
  $("interrupt").disabled = $("stop").disabled = true;
}

async function sendFile(file) {
  if (!state.id) { show("press Start first"); return; }
  try {
    const r = await api("POST", `api/sessions/${state.id}/audio`, file, file.type || "application/octet-stream");
    show(`queued ${file.name}: ${r.accepted_s.toFixed(2)} s`);
  } catch (e) {
    show(`${file.name}: ${e.message}`);
  }
}

$("start").onclick = start;
$("stop").onclick = stop;
$("interrupt").onclick = () => state.id && api("POST", `api/sessions/${state.id}/interrupt`).catch((e) => show(e.message));
$("file").onchange = (e) => { if (e.target.files[0]) sendFile(e.target.files[0]); e.target.value = ""; };
const drop = $("stage");
drop.addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
drop.addEventListener("dragleave", () => $("drop").classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  $("drop").classList.remove("over");
  if (e.dataTransfer.files[0]) sendFile(e.dataTransfer.files[0]);
});
window.addEventListener("beforeunload", () => { if (state.id) navigator.sendBeacon && stop(); });
loadAvatars().catch((e) => show("error: " + e.message));
