/* storedesk web chat widget: <script src="https://SUPPORT_HOST/widget.js" async></script>
   Options: data-position="left|right", data-color, data-title, data-welcome, data-lang,
   data-customer-id/-name/-email/-phone + data-identity-hash (the store's logged-in customer,
   signed by its server), or window.storedesk = {position, color, title, welcome, lang,
   customer: {id, name, email, phone}, identity_hash}. No globals beyond window.storedesk;
   everything lives in a shadow root. */
(function () {
  "use strict";
  var CONFIG = __STOREDESK_CONFIG__;
  var script = document.currentScript;
  if (!script || window.storedesk && window.storedesk._loaded) return;
  var opts = Object.assign({}, script.dataset, window.storedesk || {});
  window.storedesk = Object.assign(window.storedesk || {}, {_loaded: true});
  var BASE = new URL(script.src).origin;
  var T = {
    en: {open: "Chat with us", close: "Close chat", ph: "Type your message", send: "Send",
         sending: "sending…", failed: "not sent — retry", welcome: "Hi! How can we help?",
         log: "Conversation", you: "You", unread: "unread messages",
         attach: "Attach a photo or PDF", typing: "typing…",
         reply: "We usually reply within {n} minutes.",
         away: "We are away right now. We will answer from {when}.",
         big: "This file is too large.", type: "Only photos and PDFs can be sent."},
    it: {open: "Scrivici in chat", close: "Chiudi la chat", ph: "Scrivi il tuo messaggio",
         send: "Invia", sending: "invio…", failed: "non inviato — riprova",
         welcome: "Ciao! Come possiamo aiutarti?", log: "Conversazione", you: "Tu",
         unread: "messaggi non letti", attach: "Allega una foto o un PDF",
         typing: "sta scrivendo…", reply: "Di solito rispondiamo entro {n} minuti.",
         away: "Ora non siamo disponibili. Ti risponderemo da {when}.",
         big: "Il file è troppo grande.", type: "Si possono inviare solo foto e PDF."},
    th: {open: "แชทกับเรา", close: "ปิดแชท", ph: "พิมพ์ข้อความของคุณ", send: "ส่ง",
         sending: "กำลังส่ง…", failed: "ส่งไม่สำเร็จ — ลองอีกครั้ง",
         welcome: "สวัสดีค่ะ ให้เราช่วยอะไรได้บ้าง", log: "บทสนทนา", you: "คุณ",
         unread: "ข้อความที่ยังไม่ได้อ่าน", attach: "แนบรูปภาพหรือ PDF", typing: "กำลังพิมพ์…",
         reply: "โดยปกติเราจะตอบกลับภายใน {n} นาที",
         away: "ขณะนี้อยู่นอกเวลาทำการ เราจะตอบกลับตั้งแต่ {when}",
         big: "ไฟล์มีขนาดใหญ่เกินไป", type: "ส่งได้เฉพาะรูปภาพและไฟล์ PDF"}
  };
  function pick(l) { l = (l || "").slice(0, 2).toLowerCase(); return T[l] ? l : null; }
  var lang = pick(opts.lang) || pick(document.documentElement.lang) ||
    pick(navigator.language) || "en";
  var KEY = "storedesk:" + BASE;
  var store = {};
  try { store = JSON.parse(localStorage.getItem(KEY) || "{}"); } catch (e) { store = {}; }
  function save() { try { localStorage.setItem(KEY, JSON.stringify(store)); } catch (e) {} }
  function token() {
    var a = new Uint8Array(18); crypto.getRandomValues(a);
    return btoa(String.fromCharCode.apply(null, a)).replace(/\+/g, "-").replace(/\//g, "_");
  }
  var cust = opts.customer || (opts.customerId ? {id: opts.customerId, name: opts.customerName,
    email: opts.customerEmail, phone: opts.customerPhone} : null);
  var signature = opts.identity_hash || opts.identityHash || null;
  var who = cust && cust.id ? String(cust.id) : "";
  if (store.who !== undefined && store.who !== who) store = {};  // signed in or out: a new chat
  store.who = who;
  store.visitor = store.visitor || token();
  store.outbox = store.outbox || [];
  store.after = store.after || 0;
  save();

  var color = /^#[0-9a-f]{3,8}$/i.test(opts.color || "") ? opts.color : "#1d4ed8";
  var side = opts.position === "left" ? "left" : "right";
  var host = document.createElement("div");
  host.id = "storedesk-widget";
  var root = host.attachShadow({mode: "open"});
  root.innerHTML = "<style>:host{all:initial}*{box-sizing:border-box;font:15px/1.4 system-ui," +
    "sans-serif}button{cursor:pointer}#launch{position:fixed;bottom:20px;" + side + ":20px;" +
    "width:56px;height:56px;border-radius:50%;border:0;background:" + color + ";color:#fff;" +
    "display:grid;place-items:center;box-shadow:0 2px 8px #0005;z-index:2147483646}#badge{position:absolute;" +
    "top:-4px;right:-4px;min-width:22px;height:22px;border-radius:11px;background:#b91c1c;" +
    "color:#fff;font-size:13px;line-height:22px;padding:0 6px}#panel{position:fixed;bottom:" +
    "88px;" + side + ":20px;width:360px;height:520px;max-height:calc(100vh - 100px);" +
    "background:#fff;color:#111;border-radius:12px;box-shadow:0 4px 24px #0006;display:flex;" +
    "flex-direction:column;z-index:2147483647;overflow:hidden}#panel[hidden],#badge[hidden]" +
    "{display:none}header{background:" + color + ";color:#fff;padding:12px;display:flex;" +
    "justify-content:space-between;align-items:center}h2{margin:0;font-weight:600}header " +
    "button{background:none;border:0;color:#fff;font-size:22px}#log{flex:1;overflow-y:auto;" +
    "padding:12px;margin:0;list-style:none}li{margin:6px 0;padding:8px 10px;border-radius:10px;" +
    "max-width:85%;white-space:pre-wrap;word-wrap:break-word;background:#f1f5f9}li.you{" +
    "margin-left:auto;background:#dbeafe}li a{color:#1e40af}small{display:block;color:#475569;" +
    "font-size:12px}form{display:flex;border-top:1px solid #cbd5e1;padding:8px;gap:8px}input" +
    "{flex:1;padding:8px;border:1px solid #64748b;border-radius:6px}form button{background:" +
    color + ";color:#fff;border:0;border-radius:6px;padding:0 14px}li .retry{background:none;" +
    "border:0;color:#b91c1c;text-decoration:underline;padding:0}li img{display:block;max-width:" +
    "100%;max-height:160px;border-radius:6px}#typing{margin:0;padding:0 12px;min-height:20px;" +
    "color:#475569;font-size:13px}#attach{background:none;color:#334155;border:1px solid " +
    "#64748b;padding:0 8px}" +
    "@media (max-width:600px){#panel{inset:0;width:auto;height:auto;max-height:none;" +
    "border-radius:0}}</style>" +
    "<button id=launch aria-haspopup=dialog aria-expanded=false><svg width=28 height=28 viewBox='0 0 24 24' aria-hidden=true fill=currentColor><path d='M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z'/></svg><span id=badge hidden>" +
    "</span></button><section id=panel role=dialog aria-labelledby=title hidden><header>" +
    "<h2 id=title></h2><button id=close type=button>×</button></header>" +
    "<ul id=log aria-live=polite></ul><p id=typing role=status aria-live=polite></p><form>" +
    "<button id=attach type=button><svg width=18 height=18 viewBox='0 0 24 24' aria-hidden=true " +
    "fill=none stroke=currentColor stroke-width=2><path d='M21 12l-8.5 8.5a5 5 0 0 1-7-7L14 5a3.5" +
    " 3.5 0 0 1 5 5l-8.5 8.5a2 2 0 0 1-3-3L15 8'/></svg></button><input id=file type=file hidden " +
    "accept='image/jpeg,image/png,image/gif,image/webp,application/pdf'><label for=text hidden>" +
    "</label><input id=text autocomplete=off maxlength=4000><button id=send type=submit></button>" +
    "</form></section>";
  function $(id) { return root.getElementById(id); }
  var panel = $("panel"), launch = $("launch"), badge = $("badge"), log = $("log");
  var input = $("text"), unread = 0, seen = {}, hello = null, typing = false;

  function chrome() {
    var t = T[lang];
    $("title").textContent = opts.title || CONFIG.storeName || t.log;
    launch.setAttribute("aria-label", t.open + (unread ? " (" + unread + " " + t.unread + ")" : ""));
    $("close").setAttribute("aria-label", t.close);
    input.placeholder = t.ph;
    input.setAttribute("aria-label", t.ph);
    root.querySelector("label").textContent = t.ph;
    $("send").textContent = t.send;
    log.setAttribute("aria-label", t.log);
    host.setAttribute("lang", lang);
    $("attach").setAttribute("aria-label", t.attach);
    $("attach").title = t.attach;
    $("typing").textContent = typing ? t.typing : "";
    var w = $("welcome");
    if (w) {
      w.firstChild.textContent = opts.welcome || t.welcome;
      w.querySelector("small").textContent = hours(t);
    }
    root.querySelectorAll("li.pending small").forEach(function (s) {
      s.textContent = s.parentNode.classList.contains("failed") ? "" : t.sending;
    });
  }
  function hours(t) {
    if (!hello) return "";
    if (hello.open) return hello.reply_minutes ? t.reply.replace("{n}", hello.reply_minutes) : "";
    var when = new Date(hello.opens_at).toLocaleString(lang, {weekday: "long", hour: "2-digit",
      minute: "2-digit", hourCycle: "h23", timeZone: hello.timezone});
    return t.away.replace("{when}", when + " (" + hello.timezone + ")");
  }
  function linkify(el, text) {
    var re = /\bhttps?:\/\/[^\s<>"]+[^\s<>".,;:!?)]/g, last = 0, m;
    while ((m = re.exec(text))) {
      el.appendChild(document.createTextNode(text.slice(last, m.index)));
      var a = document.createElement("a");
      a.href = m[0]; a.textContent = m[0]; a.target = "_blank"; a.rel = "noopener noreferrer";
      el.appendChild(a);
      last = m.index + m[0].length;
    }
    el.appendChild(document.createTextNode(text.slice(last)));
  }
  function time(at) {
    var d = new Date(at);
    return d.toLocaleTimeString(lang, {hour: "2-digit", minute: "2-digit"});
  }
  function bubble(cls, text, at, id, files) {
    var li = document.createElement("li");
    li.className = cls;
    if (id) li.id = id;
    linkify(li, text);
    (files || []).forEach(function (f) {
      var a = document.createElement("a");
      a.href = BASE + f.url; a.target = "_blank"; a.rel = "noopener noreferrer";
      if (/^image\//.test(f.type)) {
        var img = document.createElement("img");
        img.src = a.href; img.alt = f.name || ""; a.appendChild(img);
      } else { a.textContent = "📎 " + (f.name || "PDF"); }
      li.appendChild(a);
    });
    var s = document.createElement("small");
    s.textContent = at ? time(at) : "";
    li.appendChild(s);
    log.appendChild(li);
    log.scrollTop = log.scrollHeight;
    return li;
  }
  function showPending(item) {
    var li = $("p-" + item.cid) || bubble("you pending", item.text, null, "p-" + item.cid);
    var failed = Date.now() - item.at > 60000;
    li.classList.toggle("failed", failed);
    var s = li.querySelector("small");
    s.textContent = failed ? "" : T[lang].sending;
    if (failed && !li.querySelector(".retry")) {
      var b = document.createElement("button");
      b.className = "retry"; b.type = "button"; b.textContent = T[lang].failed;
      b.onclick = function () { item.at = Date.now(); save(); b.remove(); showPending(item); flush(); };
      s.appendChild(b);
    }
  }

  var flushing = false, delay = 1000;
  function flush() {
    if (flushing || !store.outbox.length) return;
    flushing = true;
    var item = store.outbox[0];
    fetch(BASE + "/api/webchat/messages", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({text: item.text, visitor_id: store.visitor,
                            client_message_id: item.cid, customer: cust || undefined,
                            identity_hash: signature || undefined, page: location.href})
    }).then(function (r) {
      if (r.status === 202 || r.status >= 400 && r.status < 500 && r.status !== 429) {
        store.outbox.shift(); save(); delay = 1000;
        var li = $("p-" + item.cid);
        if (li && r.status !== 202) { li.classList.add("failed"); }
        return;
      }
      throw new Error("status " + r.status);
    }).catch(function () {
      showPending(item);
      delay = Math.min(delay * 2, 15000);
    }).then(function () {
      flushing = false;
      if (store.outbox.length) setTimeout(flush, store.outbox[0] === item ? delay : 0);
    });
  }
  function send(text) {
    var item = {cid: token().slice(0, 24), text: text, at: Date.now()};
    store.outbox.push(item); save();
    showPending(item);
    flush();
  }

  function upload(file, cid, li) {
    cid = cid || token().slice(0, 24);
    li = li || bubble("you pending", "📎 " + file.name, null, "p-" + cid);
    li.dataset.file = file.name;
    var s = li.querySelector("small"), t = T[lang];
    s.textContent = t.sending;
    var failed = function (why) {
      li.classList.add("failed");
      s.textContent = why || "";
      if (!why) {
        var b = document.createElement("button");
        b.className = "retry"; b.type = "button"; b.textContent = t.failed;
        b.onclick = function () { b.remove(); li.classList.remove("failed"); upload(file, cid, li); };
        s.appendChild(b);
      }
    };
    if (file.size > CONFIG.uploadMax) return failed(t.big);
    fetch(BASE + "/api/webchat/files?visitor_id=" + encodeURIComponent(store.visitor) +
          "&client_message_id=" + cid + "&name=" + encodeURIComponent(file.name), {
      method: "POST", body: file,
      headers: {"Content-Type": file.type || "application/octet-stream"}
    }).then(function (r) {
      if (r.status === 413) failed(t.big);
      else if (r.status === 415) failed(t.type);
      else if (r.status !== 202) failed();
    }).catch(function () { failed(); });
  }
  function setTyping(on) {
    if (on === typing) return;
    typing = on;
    $("typing").textContent = on ? T[lang].typing : "";
  }

  function receive(messages) {
    messages.forEach(function (m) {
      if (seen[m.id]) return;
      seen[m.id] = 1;
      store.after = Math.max(store.after, m.id);
      if (m.from === "you") {
        if (pick(m.language) && pick(m.language) !== lang) { lang = pick(m.language); chrome(); }
        var pending = root.querySelectorAll("li.pending"), file = m.files && m.files[0];
        for (var i = 0; i < pending.length; i++) {
          if (file ? pending[i].dataset.file === file.name
                   : !pending[i].dataset.file && pending[i].firstChild.textContent === m.text) {
            pending[i].remove(); break;
          }
        }
        bubble("you", m.text, m.at, null, m.files);
      } else {
        setTyping(false);
        bubble("them", m.text, m.at, null, m.files);
        if (panel.hidden) { unread++; badge.textContent = unread; badge.hidden = false; chrome(); }
      }
    });
  }
  var after = 0;
  function poll() {
    fetch(BASE + "/api/webchat/messages?visitor_id=" + encodeURIComponent(store.visitor) +
          "&after=" + after + "&wait=25&typing=" + (typing ? 1 : 0)).then(function (r) {
      if (!r.ok) throw new Error("status " + r.status);
      return r.json();
    }).then(function (data) {
      receive(data.messages);
      setTyping(!!data.typing);
      if (data.messages.length) after = data.messages[data.messages.length - 1].id;
      poll();
    }).catch(function () { setTimeout(poll, 3000); });
  }

  function toggle(open) {
    panel.hidden = !open;
    launch.setAttribute("aria-expanded", String(open));
    if (open) {
      unread = 0; badge.hidden = true; chrome(); input.focus();
    } else { launch.focus(); }
  }
  launch.onclick = function () { toggle(panel.hidden); };
  $("close").onclick = function () { toggle(false); };
  panel.addEventListener("keydown", function (e) { if (e.key === "Escape") toggle(false); });
  $("attach").onclick = function () { $("file").click(); };
  $("file").onchange = function () {
    var f = this.files && this.files[0];
    if (f) upload(f);
    this.value = "";
  };
  root.querySelector("form").onsubmit = function (e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    send(text);
  };

  bubble("them", "", null, "welcome");
  chrome();
  store.outbox.forEach(showPending);
  document.body.appendChild(host);
  fetch(BASE + "/api/webchat/welcome").then(function (r) { return r.json(); })
    .then(function (data) { hello = data; chrome(); }).catch(function () {});
  flush();
  poll();
  addEventListener("online", flush);
})();
