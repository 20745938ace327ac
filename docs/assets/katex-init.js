// Typeset the math of every page with the bundled KaTeX (no network needed):
// \( \) and \[ \] from pymdownx.arithmatex, $ and $$ from the notebooks' markdown.
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "$", right: "$", display: false },
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    throwOnError: false,
  });
});
