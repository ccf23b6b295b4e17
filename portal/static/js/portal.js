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
