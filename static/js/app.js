// Progressive enhancements; every page works without JavaScript.
(function () {
  "use strict";

  // Disable the submit button of a form marked data-disable-on-submit once it is sent, so a
  // double click sends one request. The hidden idempotency key is the real guard on the server.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.matches("[data-disable-on-submit]")) return;
    // The browser builds the form data after this handler runs and leaves out disabled buttons,
    // so the clicked button's name and value (such as action=edit) are copied into a hidden field.
    var submitter = event.submitter;
    if (submitter && submitter.name) {
      var copy = document.createElement("input");
      copy.type = "hidden";
      copy.name = submitter.name;
      copy.value = submitter.value;
      form.appendChild(copy);
    }
    form.querySelectorAll("button[type=submit], input[type=submit]").forEach(function (button) {
      button.disabled = true;
      if (button.dataset.busyLabel) button.textContent = button.dataset.busyLabel;
    });
  });

  // Copy buttons: <button data-copy-target="element-id">.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-target]");
    if (!button) return;
    var source = document.getElementById(button.dataset.copyTarget);
    if (!source || !navigator.clipboard) return;
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      var label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    });
  });
})();
