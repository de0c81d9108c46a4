// Tether dashboard: live refresh of the element marked data-live, without
// a full reload, and small form helpers. No inline script: the page's
// Content-Security-Policy allows only this file.
(function () {
  'use strict';

  // Filters submit as soon as a choice changes.
  document.querySelectorAll('select[data-autosubmit]').forEach(function (el) {
    el.addEventListener('change', function () { el.form.submit(); });
  });
  // Forms that change things ask first.
  document.querySelectorAll('form[data-confirm]').forEach(function (f) {
    f.addEventListener('submit', function (ev) {
      if (!window.confirm(f.getAttribute('data-confirm'))) { ev.preventDefault(); }
    });
  });

  // Copy buttons copy the field they name (the join token, install
  // commands).
  document.querySelectorAll('button[data-copy]').forEach(function (b) {
    b.addEventListener('click', function () {
      var field = document.getElementById(b.getAttribute('data-copy'));
      if (!field) { return; }
      field.select();
      var done = function () { b.textContent = 'Copied'; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(done, function () { document.execCommand('copy'); done(); });
      } else {
        document.execCommand('copy');
        done();
      }
    });
  });

  // After single sign-on, go on from this site, so that the browser sends
  // the new session's SameSite=Strict cookie.
  var cont = document.querySelector('a[data-continue]');
  if (cont) { window.location.replace(cont.getAttribute('href')); return; }

  var live = document.querySelector('[data-live]');
  if (!live) { return; }
  var every = parseInt(live.getAttribute('data-refresh'), 10) || 3000;
  var status = document.getElementById('live-status');
  var busy = false;

  function say(text, failed) {
    if (!status) { return; }
    status.textContent = text;
    status.classList.toggle('failed', !!failed);
  }

  function liveURL() {
    var q = new URLSearchParams(window.location.search);
    q.set('live', '1');
    return window.location.pathname + '?' + q.toString();
  }

  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(liveURL(), { credentials: 'same-origin', cache: 'no-store', headers: { 'Accept': 'text/html' } })
      .then(function (res) {
        if (res.status === 401) {
          window.location.assign('/login?next=' + encodeURIComponent(window.location.pathname + window.location.search));
          throw new Error('session ended');
        }
        if (!res.ok) { throw new Error('HTTP ' + res.status); }
        return res.text();
      })
      .then(function (html) {
        // Keep the scroll positions of scrolled tables and of the page.
        var scrolls = Array.prototype.map.call(live.querySelectorAll('.scroll'), function (el) {
          return [el.scrollLeft, el.scrollTop];
        });
        var x = window.scrollX, y = window.scrollY;
        live.innerHTML = html;
        Array.prototype.forEach.call(live.querySelectorAll('.scroll'), function (el, i) {
          if (scrolls[i]) { el.scrollLeft = scrolls[i][0]; el.scrollTop = scrolls[i][1]; }
        });
        window.scrollTo(x, y);
        live.setAttribute('data-updated', String(Date.now()));
        say('live · updated ' + new Date().toLocaleTimeString(), false);
      })
      .catch(function (err) { say('refresh failed: ' + err.message, true); })
      .then(function () { busy = false; });
  }

  say('live · every ' + Math.round(every / 1000) + ' s', false);
  window.setInterval(refresh, every);
  document.addEventListener('visibilitychange', function () { if (!document.hidden) { refresh(); } });
}());
