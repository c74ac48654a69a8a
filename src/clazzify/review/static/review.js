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
  let focusedId = null;  // the photo the focus mark belongs to, whichever element shows it

  const cards = () => Array.from(grid.querySelectorAll(".card"));

  // The mark on exactly the focused photo's card; only mismatches are touched, so the
  // observer below that calls this after every change settles at once.
  function mark() {
    cards().forEach((c, j) => {
      const want = c.dataset.id === focusedId;
      if (want) pos = j;  // the arrows move from where the mark is, after any swap
      if (c.classList.contains("focused") !== want) c.classList.toggle("focused", want);
    });
  }

  function focusCard(i) {
    const all = cards();
    if (!all.length) return;
    pos = Math.max(0, Math.min(i, all.length - 1));
    focusedId = all[pos].dataset.id;
    mark();
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
      post("/undo", {});  // its answer names the photo it gave back: the "undone" event below
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
  // An undo's answer names the photo it gave back (HX-Trigger "undone"): the mark goes to that
  // photo by id, so a late-settling card from an earlier decision cannot take it.
  document.body.addEventListener("undone", (e) => {
    const id = e.detail && e.detail.value;
    if (!id) return;
    focusedId = id;
    sync();
  });
  // Swapped-in cards are new elements, and htmx settles their class attribute on a timer of
  // its own: rather than guess when, watch the grid and put the mark back after any change.
  function sync() {
    if (!cards().some((c) => c.dataset.id === focusedId)) {
      focusCard(pos);  // the focused photo left the page: the one now in its place
    } else {
      mark();
    }
  }
  new MutationObserver(sync).observe(grid, {
    subtree: true, childList: true, attributes: true, attributeFilter: ["class"],
  });
  focusCard(0);
})();
