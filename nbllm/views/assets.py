"""The inline CSS and JavaScript of the HTML views, as plain constants.

Nothing here loads anything: no URL, no require.js. The views are readable without
the JavaScript (SVG <title> elements and title attributes give native tooltips);
where scripts run (trusted output in JupyterLab, Notebook 7, VS Code), TOOLTIP_JS
replaces those with a styled tooltip and BEAM_JS adds the beam view's extras.
Each script body runs inside a function of `root`, the view's own element.
"""

TOOLTIP_CSS = """
.nbllm-tip { position: fixed; z-index: 10000; pointer-events: none; max-width: 520px;
  background: #fff; color: #111; border: 1px solid #888; border-radius: 4px; padding: 4px 7px;
  box-shadow: 0 2px 8px rgba(0,0,0,.25); font: 11px/1.4 "DejaVu Sans Mono", Menlo, Consolas, monospace;
  white-space: pre; text-align: left; }
"""

# Moves every title (SVG <title> child or title attribute) into data-tip, so the browser's
# own tooltip does not double the styled one, then shows data-tip on hover. The tip lives on
# the page's body with a fixed position, so no output area clips it and the view never grows:
# below the element, or above it where the window ends first, always inside the window (and it
# follows the element when the page scrolls). Only one is ever on the page, and it goes when its
# element leaves the page (a view redrawn under the mouse gets no mouseout).
TOOLTIP_JS = """
var tip = null, tipFor = null;
root.querySelectorAll("title").forEach(function (t) {
  t.parentNode.setAttribute("data-tip", t.textContent);
  t.parentNode.removeChild(t);
});
root.querySelectorAll("[title]").forEach(function (el) {
  el.setAttribute("data-tip", el.getAttribute("title"));
  el.removeAttribute("title");
});
var watch = null;
function hideTip() {
  if (tip) { tip.remove(); tip = null; tipFor = null; }
  if (watch) { clearInterval(watch); watch = null; }
}
function showTip(el) {
  tipFor = el;
  if (!tip) {
    // one styled tip on the page: drop any other view's (its element may have been redrawn under the mouse)
    document.querySelectorAll(".nbllm-tip").forEach(function (other) { other.remove(); });
    tip = document.createElement("div");
    tip.className = "nbllm-tip";
    tip.setAttribute("data-for", root.id);
    document.body.appendChild(tip);
    // a view redrawn (a live beam tree) or removed while hovered gets no mouseout: its tip goes with it
    watch = setInterval(function () { if (!tipFor || !tipFor.isConnected) hideTip(); }, 300);
  }
  tip.textContent = el.getAttribute("data-tip");
  var b = el.getBoundingClientRect(), w = tip.offsetWidth, h = tip.offsetHeight, margin = 4;
  var vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
  var left = Math.max(margin, Math.min(b.left, vw - w - margin));
  var top = b.bottom + margin;
  if (top + h > vh - margin) top = b.top - h - margin;  // no room below: above the element
  top = Math.max(margin, Math.min(top, vh - h - margin));
  tip.style.left = left + "px";
  tip.style.top = top + "px";
}
root.addEventListener("mouseover", function (e) {
  var el = e.target.closest("[data-tip]");
  if (el) showTip(el);
});
root.addEventListener("mouseout", function (e) {
  var el = e.target.closest("[data-tip]");
  if (el && !el.contains(e.relatedTarget)) hideTip();
});
window.addEventListener("scroll", function () { if (tipFor) showTip(tipFor); }, true);
"""

BEAM_CSS = """
.nbb { position: relative; color: #222; text-align: left;
  font: 12px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; }
.nbb-head { margin: 2px 0 4px; }
.nbb-legend { margin: 0 0 6px; color: #444; }
.nbb-legend > span { display: inline-block; margin-right: 14px; white-space: nowrap; }
.nbb-sw { display: inline-block; width: 22px; height: 9px; margin-right: 4px; vertical-align: middle;
  border-radius: 2px; }
.nbb-scroll { max-height: 480px; overflow: auto; border: 1px solid #d0d0d0; border-radius: 4px; background: #fff; }
.nbb-canvas { position: relative; }
.nbb .nbb-canvas > svg { display: block; max-width: none; }
.nbb-node:hover rect { stroke: #000; stroke-width: 2px; }
.nbb-more { cursor: pointer; }
.nbb-more:hover text { fill: #000; }
.nbb.nbb-hide-dead .nbb-dead { display: none; }
.nbb button { font: inherit; margin-left: 10px; padding: 0 8px; cursor: pointer; }
.nbb-pruned { display: none; margin-top: 6px; background: #fafafa; border: 1px solid #c8c8c8; border-radius: 4px;
  padding: 4px 7px; white-space: pre; cursor: pointer; overflow-x: auto;
  font: 11px/1.4 "DejaVu Sans Mono", Menlo, Consolas, monospace; }
.nbb .nbb-tbl { border-collapse: collapse; margin-top: 6px; border: none; }
.nbb .nbb-tbl td, .nbb .nbb-tbl th { padding: 1px 8px; border: none; border-bottom: 1px solid #eee; background: none;
  text-align: left; vertical-align: top; }
.nbb .nbb-tbl td.nbb-num { text-align: right; font-variant-numeric: tabular-nums; }
.nbb .nbb-tbl td.nbb-text { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; white-space: pre-wrap;
  word-break: break-all; }
"""

# Extras: a pruned-candidates marker lists them under the tree, where they cover no node (click
# the marker again, or the list, to close it), and a button hides the branches that lead to no
# final sequence.
BEAM_JS = """
var list = root.querySelector(".nbb-pruned");
root.addEventListener("click", function (e) {
  if (e.target.closest(".nbb-pruned")) { list.style.display = "none"; list.removeAttribute("data-for"); return; }
  var more = e.target.closest(".nbb-more");
  if (!more) return;
  var parent = more.getAttribute("data-parent");
  if (list.getAttribute("data-for") === parent) {
    list.style.display = "none";
    list.removeAttribute("data-for");
    return;
  }
  list.setAttribute("data-for", parent);
  list.textContent = more.getAttribute("data-tip");
  list.style.display = "block";
  hideTip();
});
if (root.querySelector(".nbb-dead")) {
  var button = document.createElement("button");
  button.textContent = "hide dead branches";
  button.addEventListener("click", function () {
    var hidden = root.classList.toggle("nbb-hide-dead");
    button.textContent = hidden ? "show dead branches" : "hide dead branches";
  });
  root.querySelector(".nbb-head").appendChild(button);
}
"""

TOKEN_CSS = """
.nbt { position: relative; color: #222; text-align: left;
  font: 12px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; }
.nbt-head { margin: 2px 0 4px; color: #444; }
.nbt-sw { display: inline-block; width: 60px; height: 9px; margin: 0 4px; vertical-align: middle; border-radius: 2px; }
.nbt-text { font: 13px/1.9 "DejaVu Sans Mono", Menlo, Consolas, monospace; white-space: pre-wrap;
  word-break: break-word; padding: 4px 6px; border: 1px solid #d0d0d0; border-radius: 4px; background: #fff;
  max-height: 480px; overflow: auto; margin-bottom: 4px; }
.nbt-prompt { color: #888; }
.nbt-t { border-radius: 3px; padding: 1px 0; cursor: default; box-shadow: inset -1px 0 #fff; }
.nbt-t:hover { outline: 2px solid #333; }
.nbt-nl { color: #999; }
"""

# The chat panel (class nbllm-chat) follows JupyterLab's theme variables, with light fallbacks
# for Notebook 7 and VS Code.
CHAT_CSS = """
.nbllm-chat .nbllm-msg { padding: 6px 10px; margin: 4px 0; border-radius: 8px; line-height: 1.45;
  max-width: 100%; overflow-x: auto; color: var(--jp-content-font-color1, #111); }
.nbllm-chat .nbllm-user { background: var(--jp-brand-color3, #dbeafe); margin-left: 15%; white-space: pre-wrap; }
.nbllm-chat .nbllm-assistant { background: var(--jp-layout-color2, #f1f1f1); margin-right: 5%; }
.nbllm-chat .nbllm-role { font-size: 11px; font-weight: 600; opacity: 0.6; margin-bottom: 2px; }
.nbllm-chat .nbllm-msg pre { background: var(--jp-cell-editor-background, #f7f7f7); padding: 6px 8px;
  border-radius: 4px; overflow-x: auto; }
.nbllm-chat .nbllm-msg p { margin: 0.3em 0; }
.nbllm-chat .nbllm-msg table { border-collapse: collapse; margin: 0.3em 0; }
.nbllm-chat .nbllm-msg th, .nbllm-chat .nbllm-msg td { border: 1px solid var(--jp-border-color2, #ccc);
  padding: 2px 8px; text-align: left; }
.nbllm-chat .nbllm-note { font-size: 11px; opacity: 0.6; font-style: italic; }
.nbllm-chat .nbllm-note.nbllm-error { opacity: 1; font-style: normal; }
.nbllm-chat .nbllm-failed { border: 1px dashed var(--jp-error-color1, #b00020); }
.nbllm-chat .nbllm-failed > :not(.nbllm-note):not(.nbllm-role) { opacity: 0.55; }
.nbllm-chat .nbllm-status { font-size: 12px; opacity: 0.8; }
.nbllm-chat .nbllm-error { color: var(--jp-error-color1, #b00020); }
.nbllm-chat .nbllm-log { overflow-y: auto; overflow-x: hidden; padding-right: 4px; }
.nbllm-chat .nbllm-msg pre.nbllm-has-bar { position: relative; padding-top: 22px; }
.nbllm-chat .nbllm-code-bar { position: absolute; top: 2px; right: 4px; display: flex; gap: 4px; }
.nbllm-chat .nbllm-code-button { font: 11px/1.4 var(--jp-ui-font-family, sans-serif); padding: 0 6px;
  cursor: pointer; border: 1px solid var(--jp-border-color1, #bbb); border-radius: 3px;
  background: var(--jp-layout-color1, #fff); color: var(--jp-ui-font-color1, #222); }
.nbllm-is-dead > :not(.nbllm-dead) { opacity: 0.45; pointer-events: none; }
"""
