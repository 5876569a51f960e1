// arlkit inspect page: the filter box and selects hide trajectory cards; the shading radios colour each
// token by its entropy or advantage, normalised by the largest absolute value on the page.
(function () {
  const cards = Array.from(document.querySelectorAll("section.traj"));
  const query = document.getElementById("q");
  const source = document.getElementById("src");
  const outcome = document.getElementById("outcome");
  const count = document.getElementById("count");

  function applyFilter() {
    const q = query.value.trim().toLowerCase();
    let shown = 0;
    for (const card of cards) {
      const ok = (!q || card.textContent.toLowerCase().includes(q)) &&
        (source.value === "all" || card.dataset.source === source.value) &&
        (outcome.value === "all" || card.dataset.outcome === outcome.value);
      card.hidden = !ok;
      if (ok) shown += 1;
    }
    count.textContent = shown + " of " + cards.length + " trajectories";
  }

  const tokens = Array.from(document.querySelectorAll(".tokens .tok"));
  const maxAbs = (key) => tokens.reduce((m, t) => (key in t.dataset ? Math.max(m, Math.abs(+t.dataset[key])) : m), 0) || 1;
  const scale = { e: maxAbs("e"), a: maxAbs("a") };

  function shade(mode) {
    document.body.dataset.shade = mode;
    for (const t of tokens) {
      let colour = "";
      if (mode === "entropy" && "e" in t.dataset) {
        colour = "rgba(235, 120, 0, " + (0.85 * Math.abs(+t.dataset.e) / scale.e).toFixed(3) + ")";
      } else if (mode === "advantage" && "a" in t.dataset) {
        const a = +t.dataset.a / scale.a;
        colour = (a >= 0 ? "rgba(0, 150, 70, " : "rgba(210, 30, 30, ") + (0.85 * Math.abs(a)).toFixed(3) + ")";
      }
      t.style.backgroundColor = colour;
    }
  }

  query.addEventListener("input", applyFilter);
  source.addEventListener("change", applyFilter);
  outcome.addEventListener("change", applyFilter);
  for (const radio of document.querySelectorAll("input[name=shade]")) {
    radio.addEventListener("change", () => shade(radio.value));
  }
  const initial = new URLSearchParams(location.search).get("shade");
  if (initial) {
    const radio = document.querySelector("input[name=shade][value=" + CSS.escape(initial) + "]");
    if (radio && !radio.disabled) { radio.checked = true; shade(initial); }
  }
  applyFilter();
})();
