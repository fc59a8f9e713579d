// The embedtag page: pick, drop or record audio; show its waveform, tags, timeline and similar sounds.
// Plain JS, no build step, nothing fetched from outside this server.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var info = null;
  var token = sessionStorage.getItem("embedtag-token") || "";
  var player = null;

  function headers() { return token ? {Authorization: "Bearer " + token} : {}; }

  function setStatus(text) { $("status").textContent = text || ""; }

  function showError(text) {
    var el = $("error");
    el.textContent = text || "";
    el.hidden = !text;
  }

  // API errors come as {"error", "detail"}; say in words what happened.
  var PHRASES = {
    401: "This server needs a valid token.",
    404: "Not found.",
    413: "Too large for this server.",
    415: "The server could not read this file as audio.",
    422: "The server could not use this audio.",
    503: "The server is busy; try again in a moment."
  };

  function api(path, options) {
    options = options || {};
    options.headers = Object.assign({}, options.headers || {}, headers());
    return fetch(path, options).then(function (r) {
      if (r.ok) return r;
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (r.status === 401) $("token-box").hidden = false;
        var words = PHRASES[r.status] || ("The server answered " + r.status + ".");
        var err = new Error(words + (body.detail ? " " + body.detail : ""));
        err.status = r.status;
        throw err;
      });
    });
  }

  function loadInfo() {
    return api("/v1/info").then(function (r) { return r.json(); }).then(function (i) {
      info = i;
      var what = i.mode === "backbone" ? "AudioSet classes of " + i.backbone
        : (i.mode === "head" ? "a head on " + i.backbone : "a fine-tuned " + (i.backbone || "run"));
      $("about").textContent = "Tags with " + what + " (" + i.labels.length + " labels)" +
        (i.index ? "; finds similar sounds among " + i.index.clips + " clips." : ".");
      $("server").textContent = "embedtag " + i.versions.embedtag + " · max " + i.limits.max_upload_mb +
        " MB, " + i.limits.max_duration_s + " s";
      $("token-box").hidden = true;
    }).catch(function (e) { showError(e.message); });
  }

  // ------------------------------------------------------------------ input
  var drop = $("drop");
  drop.addEventListener("keydown", function (e) {
    if ((e.key === "Enter" || e.key === " ") && e.target === drop) { e.preventDefault(); $("file").click(); }
  });
  ["dragenter", "dragover"].forEach(function (t) {
    drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (t) {
    drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.remove("over"); });
  });
  drop.addEventListener("drop", function (e) {
    var f = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (f) analyse(f, f.name);
  });
  $("file").addEventListener("change", function () {
    var f = $("file").files[0];
    if (f) analyse(f, f.name);
    $("file").value = "";
  });
  $("token-save").addEventListener("click", function () {
    token = $("token").value.trim();
    sessionStorage.setItem("embedtag-token", token);
    loadInfo();
  });

  // Recording: MediaRecorder gives WebM/Opus, which the server's decoder does not read; the browser decodes it
  // and the page sends 16-bit WAV.
  var recorder = null, chunks = [];
  $("record").addEventListener("click", function () {
    var btn = $("record");
    if (recorder && recorder.state === "recording") { recorder.stop(); return; }
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      showError("Recording is not available in this browser (or the page is not served from localhost/HTTPS).");
      return;
    }
    navigator.mediaDevices.getUserMedia({audio: true}).then(function (stream) {
      chunks = [];
      recorder = new MediaRecorder(stream);
      recorder.ondataavailable = function (e) { if (e.data.size) chunks.push(e.data); };
      recorder.onstop = function () {
        stream.getTracks().forEach(function (t) { t.stop(); });
        btn.setAttribute("aria-pressed", "false");
        btn.textContent = "● Record";
        new Blob(chunks).arrayBuffer().then(decode).then(function (buf) {
          analyse(new Blob([wav(buf)], {type: "audio/wav"}), "recording.wav", buf);
        }).catch(function () { showError("The recording could not be decoded by the browser."); });
      };
      recorder.start();
      document.body.setAttribute("data-state", "recording");
      btn.setAttribute("aria-pressed", "true");
      btn.textContent = "■ Stop";
      setStatus("Recording… press Stop when done.");
    }).catch(function (e) { showError("No microphone: " + e.message); });
  });

  function decode(arrayBuffer) {
    var Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return Promise.reject(new Error("no Web Audio"));
    var ctx = new Ctx();
    return new Promise(function (ok, fail) { ctx.decodeAudioData(arrayBuffer, ok, fail); })
      .finally(function () { if (ctx.close) ctx.close(); });
  }

  function wav(buf) {  // AudioBuffer -> mono 16-bit PCM WAV bytes
    var n = buf.length, sr = buf.sampleRate, out = new DataView(new ArrayBuffer(44 + 2 * n));
    var mono = new Float32Array(n);
    for (var c = 0; c < buf.numberOfChannels; c++) {
      var d = buf.getChannelData(c);
      for (var i = 0; i < n; i++) mono[i] += d[i] / buf.numberOfChannels;
    }
    function str(o, s) { for (var i = 0; i < s.length; i++) out.setUint8(o + i, s.charCodeAt(i)); }
    str(0, "RIFF"); out.setUint32(4, 36 + 2 * n, true); str(8, "WAVE"); str(12, "fmt ");
    out.setUint32(16, 16, true); out.setUint16(20, 1, true); out.setUint16(22, 1, true);
    out.setUint32(24, sr, true); out.setUint32(28, 2 * sr, true); out.setUint16(32, 2, true);
    out.setUint16(34, 16, true); str(36, "data"); out.setUint32(40, 2 * n, true);
    for (var j = 0; j < n; j++) out.setInt16(44 + 2 * j, Math.max(-1, Math.min(1, mono[j])) * 0x7fff, true);
    return out.buffer;
  }

  // ------------------------------------------------------------------ analysis
  function analyse(blob, name, decoded) {
    showError("");
    document.body.removeAttribute("data-state");
    setStatus("Analysing " + name + "…");
    ["tags-section", "timeline-section", "similar-section"].forEach(function (id) { $(id).hidden = true; });
    $("tags").innerHTML = ""; $("similar").innerHTML = "";
    var waveform = (decoded ? Promise.resolve(decoded) : blob.arrayBuffer().then(decode))
      .then(function (buf) { drawWave(buf, name); })
      .catch(function () { $("wave-fig").hidden = true; });
    var form = function () { var f = new FormData(); f.append("file", blob, name); return f; };
    var tagging = api("/v1/tag", {method: "POST", body: form()}).then(function (r) { return r.json(); })
      .then(renderTags);
    var searching = info && info.index
      ? api("/v1/search?k=10", {method: "POST", body: form()}).then(function (r) { return r.json(); })
        .then(renderSimilar)
      : Promise.resolve();
    Promise.all([tagging, searching, waveform]).then(function () {
      setStatus("Done: " + name + ".");
      document.body.setAttribute("data-state", "done");
    }).catch(function (e) {
      setStatus("");
      showError(e.message);
      document.body.setAttribute("data-state", "error");
    });
  }

  function drawWave(buf, name) {
    var canvas = $("wave"), g = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
    var d = buf.getChannelData(0), step = Math.max(1, Math.floor(d.length / w));
    g.clearRect(0, 0, w, h);
    g.fillStyle = "#1f6feb";
    for (var x = 0; x < w; x++) {
      var lo = 1, hi = -1;
      for (var i = x * step; i < Math.min(d.length, (x + 1) * step); i++) {
        if (d[i] < lo) lo = d[i];
        if (d[i] > hi) hi = d[i];
      }
      if (hi < lo) continue;
      g.fillRect(x, (1 - hi) * h / 2, 1, Math.max(1, (hi - lo) * h / 2));
    }
    $("wave-fig").hidden = false;
    $("wave-cap").textContent = name + " · " + buf.duration.toFixed(2) + " s";
    canvas.setAttribute("aria-label", "Waveform of " + name + ", " + buf.duration.toFixed(1) + " seconds");
  }

  function renderTags(res) {
    var present = {};
    res.labels.forEach(function (l) { present[l] = true; });
    var ol = $("tags");
    ol.innerHTML = "";
    res.tags.forEach(function (t) {
      var li = document.createElement("li");
      if (present[t.label]) li.className = "present";
      var pct = Math.round(t.score * 1000) / 10;
      li.innerHTML = '<span class="label"></span><span class="bar" role="meter" aria-valuemin="0" ' +
        'aria-valuemax="100"><span></span></span><span class="score"></span>';
      li.querySelector(".label").textContent = t.label;
      var bar = li.querySelector(".bar");
      bar.setAttribute("aria-valuenow", String(pct));
      bar.setAttribute("aria-label", t.label + ": " + pct + "%");
      bar.firstChild.style.width = Math.max(0.5, pct) + "%";
      li.querySelector(".score").textContent = t.score.toFixed(3);
      li.setAttribute("data-label", t.label);
      ol.appendChild(li);
    });
    $("labels").textContent = res.labels.length ? "Tagged: " + res.labels.join(", ")
      : "No label reaches its threshold; the best guesses are below.";
    $("tags-section").hidden = false;
    if (res.timeline) drawTimeline(res.timeline, res.duration_s);
  }

  function drawTimeline(tl, duration) {
    var canvas = $("timeline"), g = canvas.getContext("2d");
    var left = 190, top = 6, rowH = 18, n = tl.scores.length ? tl.scores[0].length : 0;
    canvas.height = top + rowH * tl.labels.length + 24;
    var w = canvas.width - left - 8, cell = n ? w / n : w;
    g.clearRect(0, 0, canvas.width, canvas.height);
    g.font = "12px system-ui, sans-serif";
    g.textBaseline = "middle";
    tl.labels.forEach(function (label, i) {
      g.fillStyle = "#1d232a";
      g.fillText(label.length > 28 ? label.slice(0, 27) + "…" : label, 4, top + rowH * i + rowH / 2);
      tl.scores[i].forEach(function (s, j) {
        var v = Math.max(0, Math.min(1, s));  // white -> deep blue
        g.fillStyle = "rgb(" + Math.round(255 - 224 * v) + "," + Math.round(255 - 144 * v) + "," +
          Math.round(255 - 20 * v) + ")";
        g.fillRect(left + j * cell, top + rowH * i, Math.ceil(cell), rowH - 2);
      });
    });
    g.fillStyle = "#5b6570";
    var y = top + rowH * tl.labels.length + 12;
    for (var t = 0; t <= n; t += Math.max(1, Math.ceil(n / 10))) {
      g.fillText((t * tl.hop_s).toFixed(0) + " s", Math.min(left + t * cell, canvas.width - 40), y);
    }
    $("timeline-cap").textContent = n + " windows of " + tl.window_s + " s; darker is more likely.";
    canvas.setAttribute("aria-label", "Heat map of " + tl.labels.length + " labels over " + n + " windows of " +
      tl.window_s + " s");
    $("timeline-section").hidden = false;
  }

  function renderSimilar(res) {
    var ol = $("similar");
    ol.innerHTML = "";
    res.results.forEach(function (r) {
      var li = document.createElement("li");
      li.setAttribute("data-clip", r.clip_id);
      li.innerHTML = '<div class="row"><button type="button" class="play">▶ Play</button>' +
        '<span class="clip"></span><span class="muted score"></span><span class="chips"></span></div>';
      li.querySelector(".clip").textContent = r.clip_id;
      li.querySelector(".score").textContent = "similarity " + r.score.toFixed(3);
      r.labels.forEach(function (l) {
        var c = document.createElement("span");
        c.className = "chip";
        c.textContent = l;
        li.querySelector(".chips").appendChild(c);
      });
      var btn = li.querySelector(".play");
      btn.setAttribute("aria-label", "Play " + r.clip_id);
      btn.addEventListener("click", function () { play(r.clip_id, btn); });
      ol.appendChild(li);
    });
    if (!res.results.length) ol.innerHTML = "<li>No similar sounds in the index.</li>";
    $("similar-section").hidden = false;
  }

  function play(clipId, btn) {
    if (player) { player.pause(); player = null; }
    api("/v1/clips/" + clipId.split("/").map(encodeURIComponent).join("/") + "/audio")
      .then(function (r) { return r.blob(); })
      .then(function (b) {
        player = new Audio(URL.createObjectURL(b));
        btn.textContent = "♪ Playing";
        player.onended = function () { btn.textContent = "▶ Play"; };
        return player.play();
      })
      .catch(function (e) { btn.textContent = "▶ Play"; showError(e.message); });
  }

  loadInfo();
})();
