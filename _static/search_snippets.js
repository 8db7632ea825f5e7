// Better search snippets (Jupyter Book 1 loads every .js in _static/ on every page).
// Sphinx looks for the *stemmed* search term ("entropi", "choleski") in the page text, fails for most words and
// then shows the page's first words (the toolbar's "Repository"). Here a snippet is cut around the word the
// reader typed (or, failing that, a word that starts like its stem), from the article text only, with the TeX
// source of formulas left out.
document.addEventListener("DOMContentLoaded", () => {
  if (typeof Search === "undefined") return;
  const articleText = (htmlString, anchor) => {
    const doc = new DOMParser().parseFromString(htmlString, "text/html");
    for (const q of [".headerlink", "script", "style", ".math", "mjx-container", ".header-article", ".prev-next-area"]) {
      doc.querySelectorAll(q).forEach((el) => el.replaceWith(" "));
    }
    let root = null;
    if (anchor) root = doc.querySelector(`article ${anchor}`) || doc.querySelector(`[role="main"] ${anchor}`);
    root = root || doc.querySelector("article.bd-article") || doc.querySelector('[role="main"]');
    return root ? root.textContent.replace(/\s+/g, " ").trim() : "";
  };
  Search.htmlToText = articleText;
  Search.makeSearchSummary = (htmlText, keywords, anchor) => {
    const text = articleText(htmlText, anchor);
    if (text === "") return null;
    const lower = text.toLowerCase();
    const typed = (new URLSearchParams(window.location.search).get("q") || "")
      .toLowerCase().split(/\s+/).filter((w) => w.length > 1);
    const stems = [...keywords].map((k) => k.toLowerCase().slice(0, Math.max(3, k.length - 1)));
    let at = -1;
    for (const w of [...typed, ...stems]) {
      at = lower.indexOf(w);
      if (at > -1) break;
    }
    const start = Math.max(at - 100, 0);
    const summary = document.createElement("p");
    summary.classList.add("context");
    summary.textContent = (start > 0 ? "..." : "") + text.substr(start, 240).trim() +
      (start + 240 < text.length ? "..." : "");
    return summary;
  };
});
