var a = this, b = document.getElementById('$sync_id');
if (!b) return;
b.click();
var next = $mark;
(function f() {
  if (a.paused || a.ended) return;
  if (a.currentTime >= next) { b.click(); next += $period; }
  setTimeout(f, 4);
})();
