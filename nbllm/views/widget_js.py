"""The browser side of nbllm's anywidgets, as inline ES modules (no front-end build, nothing fetched).

WATCH_KERNEL_JS is shared: when a widget's kernel goes away (a restart or a
shutdown) ipywidgets sets its model's comm_live to false (and marks ordinary
widgets' views with the class "jupyter-widgets-disconnected"); `watchKernel`
notices either, puts a banner "kernel restarted: re-run this cell" over the panel
the view belongs to, and calls back so the view can disable itself. CHAT_LOG_ESM draws
the chat log: the kernel sends each message as escaped HTML (nbllm.views.chat_view),
the browser keeps the log scrolled to the newest text while the reader is at the
bottom, and adds Copy and Insert buttons to code blocks. The KV monitor's drawing
is in kv_monitor_js.py.
"""

DEAD_TEXT = "kernel restarted: re-run this cell"

WATCH_KERNEL_JS = """
function watchKernel(el, model, onDead) {
  let dead = false;
  const die = () => {
    if (dead) return;
    dead = true;
    const panel = el.closest(".nbllm-panel") || el;
    if (!panel.querySelector(":scope > .nbllm-dead")) {
      const banner = document.createElement("div");
      banner.className = "nbllm-dead";
      banner.textContent = "%s";
      banner.style.cssText = "padding: 4px 8px; margin: 2px 0; border-radius: 4px; font-weight: 600; " +
        "background: #fdecea; color: #b00020; border: 1px solid #f5c2c0;";
      panel.prepend(banner);
      panel.classList.add("nbllm-is-dead");
    }
    if (onDead) onDead();
  };
  // ipywidgets marks the model when its kernel goes away (comm_live turns false, the only change after a
  // model is made), and marks the views of ordinary widgets (the panel around this one) with a class
  model.on("comm_live_update", die);
  const marked = () => [el, el.closest(".nbllm-panel")].some(
    (node) => node && node.classList.contains("jupyter-widgets-disconnected"));
  const observer = new MutationObserver(() => { if (marked()) die(); });
  for (const node of [el, el.closest(".nbllm-panel")]) {
    if (node) observer.observe(node, { attributes: true, attributeFilter: ["class"] });
  }
  if (marked()) die();
}
""" % DEAD_TEXT

# Copy writes the code to the clipboard. Insert, in JupyterLab and Notebook 7, clicks the notebook's own
# "insert a cell below" toolbar button (the panel's cell is the active one, as the click on Insert made it)
# and writes the code into the new cell's editor; elsewhere (VS Code, a static page) it copies instead.
CHAT_LOG_ESM = WATCH_KERNEL_JS + """
function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  const area = document.createElement("textarea");
  area.value = text;
  document.body.appendChild(area);
  area.select();
  document.execCommand("copy");
  area.remove();
  return Promise.resolve();
}

async function insertCell(el, code) {
  const cell = el.closest(".jp-Cell");
  const panel = el.closest(".jp-NotebookPanel");
  const add = panel && panel.querySelector('.jp-Toolbar [data-command="notebook:insert-cell-below"]');
  if (!cell || !add) return false;
  if (!cell.classList.contains("jp-mod-active")) {
    const prompt = cell.querySelector(".jp-InputPrompt") || cell;
    prompt.dispatchEvent(new MouseEvent("mousedown", { bubbles: true }));
    prompt.dispatchEvent(new MouseEvent("mouseup", { bubbles: true }));
  }
  const before = new Set(panel.querySelectorAll(".jp-Cell"));
  const fresh = () => [...panel.querySelectorAll(".jp-Cell")].find((c) => !before.has(c));
  // JupyterLab's toolbar buttons act on mousedown (so that they keep the focus where it is); others on click
  const pause = () => new Promise((resolve) => setTimeout(resolve, 50));
  add.dispatchEvent(new MouseEvent("mousedown", { bubbles: true, cancelable: true, button: 0 }));
  for (let i = 0; i < 40 && !fresh(); i++) await pause();
  if (!fresh()) add.click();
  for (let i = 0; i < 100; i++) {
    const added = fresh();
    const content = added && added.querySelector(".cm-content");
    if (content && content.cmView && content.cmView.view) {
      const view = content.cmView.view;
      view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: code } });
      view.focus();
      return true;
    }
    await pause();
  }
  return false;
}

function addCodeButtons(node, el) {
  node.querySelectorAll("pre").forEach((pre) => {
    const source = pre.querySelector("code") || pre;
    const code = source.textContent.replace(/\\u258d$/, "").replace(/\\n$/, "");
    const bar = document.createElement("span");
    bar.className = "nbllm-code-bar";
    const button = (label, title, action) => {
      const b = document.createElement("button");
      b.className = "nbllm-code-button";
      b.textContent = label;
      b.title = title;
      b.addEventListener("click", async () => {
        const said = await action();
        b.textContent = said;
        setTimeout(() => { b.textContent = label; }, 1500);
      });
      return b;
    };
    bar.append(
      button("Copy", "copy this code", async () => { await copyText(code); return "Copied"; }),
      button("Insert", "insert this code into a new cell below", async () => {
        if (await insertCell(el, code)) return "Inserted";
        await copyText(code);
        return "Copied: paste it into a cell";
      }));
    pre.classList.add("nbllm-has-bar");
    pre.prepend(bar);
  });
}

function render({ model, el }) {
  const box = document.createElement("div");
  box.className = "nbllm-log";
  const list = document.createElement("div");
  const live = document.createElement("div");
  box.append(list, live);
  el.appendChild(box);
  const atBottom = () => box.scrollHeight - box.scrollTop - box.clientHeight < 30;
  const keepBottom = (change) => {
    const stick = atBottom();
    change();
    if (stick) box.scrollTop = box.scrollHeight;
  };
  const fill = (node, html) => {
    node.innerHTML = html;
    addCodeButtons(node, el);
  };
  let shown = [];
  const drawMessages = () => keepBottom(() => {
    const messages = model.get("messages");
    const same = shown.length <= messages.length && shown.every((html, i) => html === messages[i]);
    if (!same) {
      list.replaceChildren();
      shown = [];
    }
    for (const html of messages.slice(shown.length)) {
      const item = document.createElement("div");
      fill(item, html);
      list.appendChild(item);
    }
    shown = messages.slice();
  });
  const drawLive = () => keepBottom(() => fill(live, model.get("live")));
  const size = () => { box.style.maxHeight = model.get("max_height"); };
  size();
  drawMessages();
  drawLive();
  box.scrollTop = box.scrollHeight;
  model.on("change:messages", drawMessages);
  model.on("change:live", drawLive);
  model.on("change:max_height", size);
  watchKernel(el, model);
}
export default { render };
"""
