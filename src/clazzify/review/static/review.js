// Keyboard review on the queue page: digits/initials label, x marks "not a class", Enter accepts,
// u undoes, arrows move.
(function () {
  "use strict";
  const grid = document.getElementById("grid");
  if (!grid) return;
  const classes = JSON.parse(grid.dataset.classes || "[]");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const query = grid.dataset.query ? "?" + grid.dataset.query : "";
  let pos = 0;
  let refocusChanged = false;  // after an undo, focus the photo it gave back

  const cards = () => Array.from(grid.querySelectorAll(".card"));

  function focusCard(i) {
    const all = cards();
    if (!all.length) return;
    pos = Math.max(0, Math.min(i, all.length - 1));
    all.forEach((c, j) => c.classList.toggle("focused", j === pos));
    all[pos].scrollIntoView({ block: "nearest" });
  }

  function columns() {
    const all = cards();
    if (all.length < 2) return 1;
    const top = all[0].offsetTop;
    let n = 0;
    for (const c of all) { if (c.offsetTop !== top) break; n++; }
    return Math.max(1, n);
  }

  function post(url, values) {
    return htmx.ajax("POST", url + query, {
      target: "#toast", swap: "innerHTML", values: values, headers: { "X-CSRF-Token": csrf },
    });
  }

  function decide(values) {
    const card = cards()[pos];
    if (!card) return;
    // Move on at once, so a fast typist's next key goes to the next photo.
    focusCard(pos + 1);
    post("/label", Object.assign({ image_id: card.dataset.id }, values));
  }

  function classFor(key) {
    if (/^[1-9]$/.test(key)) return classes[Number(key) - 1];
    const k = key.toLowerCase();
    return classes.find((c) => c[0].toLowerCase() === k);
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target.closest("input, select, textarea")) return;
    const moves = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns(), ArrowDown: columns() };
    if (e.key in moves) { focusCard(pos + moves[e.key]); e.preventDefault(); return; }
    if (e.key === "Enter") { decide({ action: "accept" }); e.preventDefault(); return; }
    if (e.key === "A" && e.shiftKey) {
      const button = document.getElementById("accept-page");
      if (button) button.click();
      e.preventDefault();
      return;
    }
    if (e.key === "u") {
      grid.querySelectorAll(".card.just-changed").forEach((c) => c.classList.remove("just-changed"));
      refocusChanged = true;
      post("/undo", {});
      e.preventDefault();
      return;
    }
    if (e.key === "x" && grid.dataset.notAClass) {
      decide({ label: grid.dataset.notAClass });  // none of the classes: an OOD example
      e.preventDefault();
      return;
    }
    if (e.key.length === 1 && !e.shiftKey) {
      const label = classFor(e.key);
      if (label) { decide({ label: label }); e.preventDefault(); }
    }
  });

  grid.addEventListener("click", (e) => {
    const card = e.target.closest(".card");
    if (card) focusCard(cards().indexOf(card));
  });
  // Swapped-in cards are new elements: put the focus mark back.
  function refocus() {
    const changed = refocusChanged && grid.querySelector(".card.just-changed");
    if (changed) refocusChanged = false;
    focusCard(changed ? cards().indexOf(changed) : pos);
  }
  document.body.addEventListener("htmx:afterSettle", () => {
    refocus();
    // htmx settles a swapped card's class attribute on a timer of its own, which can land
    // after this event and wipe the mark: set it again once that timer has run.
    setTimeout(refocus, htmx.config.defaultSettleDelay + 30);
  });
  focusCard(0);
})();
