// After htmx swaps in a form that was refused (or a page with an error message), move the
// focus to the first error so that keyboard and screen-reader users land on it. Pages
// without JavaScript get the same through the autofocus attribute on the first error.
document.addEventListener("htmx:afterSettle", (event) => {
  const detail = event.detail;
  const config = detail.requestConfig;
  if (!config || (config.verb === "get" && detail.xhr.status < 400)) {
    return; // a navigation or a poll: leave the focus alone
  }
  const root = detail.target || document.body;
  const first = root.querySelector(
    '[aria-invalid="true"], .flash-error, .error-page-message'
  );
  if (!first) {
    return;
  }
  if (!first.matches("input, select, textarea, button, a[href]")) {
    first.setAttribute("tabindex", "-1");
  }
  first.focus();
});

// The account menu (a <details>) closes on Escape, and the focus goes back to its summary.
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") {
    return;
  }
  for (const menu of document.querySelectorAll("details.account-menu[open]")) {
    menu.open = false;
    menu.querySelector("summary").focus();
  }
});

// A copy button next to a value shown once (a new API token): data-copy names the element.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) {
    return;
  }
  const source = document.getElementById(button.dataset.copy);
  if (!source) {
    return;
  }
  try {
    await navigator.clipboard.writeText(source.textContent.trim());
    button.textContent = "Copied";
  } catch (error) {
    // No clipboard (an insecure origin, a refusal): select the text to copy by hand.
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    button.textContent = "Press Ctrl+C to copy";
  }
});

// Copy buttons exist only with JavaScript: they are in the markup as hidden.
document.addEventListener("DOMContentLoaded", showCopyButtons);
document.addEventListener("htmx:afterSettle", showCopyButtons);
function showCopyButtons() {
  for (const button of document.querySelectorAll("button[data-copy][hidden]")) {
    button.hidden = false;
  }
}

// On a narrow screen a wide table scrolls in its own box: keyboard users reach it with Tab
// and scroll it with the arrow keys.
function focusableScrollers() {
  for (const table of document.querySelectorAll("main table")) {
    if (table.scrollWidth > table.clientWidth + 1) {
      table.tabIndex = 0;
    } else if (table.getAttribute("tabindex") === "0") {
      table.removeAttribute("tabindex");
    }
  }
}
document.addEventListener("DOMContentLoaded", focusableScrollers);
document.addEventListener("htmx:afterSettle", focusableScrollers);
window.addEventListener("resize", focusableScrollers);
