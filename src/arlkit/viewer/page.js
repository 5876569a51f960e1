// arlkit inspect page: the filter box and selects hide trajectory cards, and say so when none is left; the
// shading radios colour each token by its entropy, scaled by the largest entropy of its own episode (so each
// episode's uncertain tokens stand out whatever its length or temperature), or by its advantage, on one
// scale for the page (GRPO gives one value to every token of an episode, so a per-episode scale would show
// every episode at full strength).
(function () {
  const cards = Array.from(document.querySelectorAll("section.traj"));
  const query = document.getElementById("q");
  const source = document.getElementById("src");
  const outcome = document.getElementById("outcome");
  const count = document.getElementById("count");
  const noMatch = document.getElementById("no-match");

  function describeFilter() {
    const parts = [];
    if (query.value.trim()) parts.push("text \u201c" + query.value.trim() + "\u201d");
    if (source.value !== "all") parts.push("file " + source.value);
    if (outcome.value !== "all") parts.push(outcome.options[outcome.selectedIndex].text);
    return parts.join(", ");
  }

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
    noMatch.hidden = shown > 0;
    noMatch.textContent = shown > 0 ? "" :
      "No episode matches " + describeFilter() + ". Clear the filter to see all " + cards.length + ".";
  }

  const maxAbs = (tokens, key) =>
    tokens.reduce((m, t) => (key in t.dataset ? Math.max(m, Math.abs(+t.dataset[key])) : m), 0) || 1;
  const episodes = cards.map((card) => Array.from(card.querySelectorAll(".tokens .tok")));
  const tokens = episodes.flat();
  const entropyScale = new Map();
  for (const episode of episodes) {
    const scale = maxAbs(episode, "e");
    for (const t of episode) entropyScale.set(t, scale);
  }
  const advantageScale = maxAbs(tokens, "a");

  function shade(mode) {
    document.body.dataset.shade = mode;
    for (const t of tokens) {
      let colour = "";
      if (mode === "entropy" && "e" in t.dataset) {
        const e = Math.abs(+t.dataset.e) / entropyScale.get(t);
        colour = "rgba(235, 120, 0, " + (0.85 * e).toFixed(3) + ")";
      } else if (mode === "advantage" && "a" in t.dataset) {
        const a = +t.dataset.a / advantageScale;
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
  // ?q=…&src=…&outcome=…&shade=… open the page filtered and shaded (a link to what one is looking at)
  const params = new URLSearchParams(location.search);
  query.value = params.get("q") || "";
  for (const select of [source, outcome]) {
    const wanted = params.get(select.id);
    if (Array.from(select.options).some((o) => o.value === wanted)) select.value = wanted;
  }
  const initial = params.get("shade");
  if (initial) {
    const radio = document.querySelector("input[name=shade][value=" + CSS.escape(initial) + "]");
    if (radio && !radio.disabled) { radio.checked = true; shade(initial); }
  }
  applyFilter();
})();
