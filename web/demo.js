// The demo page: one protocol client, ghost-text autocomplete and an ask form.
// A separate module, not an inline script, so the page runs under a strict Content-Security-Policy.
import { connect, attachAutocomplete, askInto } from "/static/widget.js";
const client = connect();
client.onStatus((text) => { document.getElementById("status").textContent = text; });
attachAutocomplete(document.getElementById("editor"), document.querySelector(".mirror"), client, {
  onTiming: ({ firstTokenMs, debounceMs }) => {
    document.getElementById("timing").textContent = `suggestions: first token ${firstTokenMs} ms · debounce ${debounceMs} ms`;
  },
});
const stopButton = document.getElementById("stop");
const view = {
  answer: document.getElementById("answer"),
  sources: document.getElementById("sources"),
  meta: document.getElementById("meta"),
  route: document.getElementById("route"),
  onDone: () => { stopButton.disabled = true; },
};
let stop = null;
document.getElementById("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  if (stop) stop();
  stop = askInto(view, client, document.getElementById("question").value);
  stopButton.disabled = false;
});
stopButton.addEventListener("click", () => { if (stop) stop(); });
