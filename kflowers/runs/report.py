"""`RUN/report.html`: a run directory on one page.

One self-contained HTML file (the pictures are embedded, nothing is fetched
from the network) with what a reader looks for first: the test accuracy of
the saved model, the run's settings, the learning curves, the confusion
matrix and the per-class table, the test photos with the highest loss, the
history of every epoch, and where the time went. It is written from the run's
own files (`metrics.json`, `config.json`, `history.csv` and the plots), so
it says nothing they don't.

Example:
```python
write_run_report("runs/latest")  # 'runs/latest/report.html' (kflowers train does this itself)
```
"""

import base64
import html
import json
import os

from kflowers.files import open_regular
from kflowers.files import read_json
from kflowers.files import write_text
from kflowers.runs.record import read_history_rows

FILE_NAME = "report.html"
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 64em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
.headline { font-size: 1.15em; } .headline b { font-size: 1.3em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; }
th { background: #f3f3f3; text-align: left; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; } .pictures { display: flex; gap: 1em; flex-wrap: wrap; }
.pictures figure { margin: 0; flex: 1 1 28em; } figcaption { color: #666; font-size: 0.9em; }
"""


def write_run_report(out):
    """Write `out/report.html` from the run's files; return its path.

    Args:
        out: a run directory holding at least `metrics.json` and `config.json`.
    """
    metrics = read_json(os.path.join(out, "metrics.json"))
    config = read_json(os.path.join(out, "config.json"))
    sections = [
        _headline(metrics, config),
        _pictures(out, [("curves.png", "learning curves"), ("confusion.png", "confusion matrix (rows: true class)")]),
        "<h2>Per class</h2>" + _per_class(metrics),
        "<h2>Highest-loss test photos</h2>" + _pictures(out, [("top_losses.png", "true and predicted class")]),
        "<h2>Every epoch</h2>" + _history(out),
        "<h2>Where the time went (seconds)</h2>" + _table([metrics.get("seconds", {})], number=True),
        "<h2>Settings</h2>" + _settings(config),
    ]
    title = f"kflowers run: {config.get('strategy', '?')}, {config.get('recipe', 'lesson')} recipe"
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_text(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n<h1>{_text(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    path = os.path.join(out, FILE_NAME)
    write_text(path, page)
    return path


def _text(value):
    return html.escape(str(value))


def _headline(metrics, config):
    accuracy = metrics.get("test_accuracy")
    minutes = (metrics.get("wall_seconds") or 0) / 60
    state = "interrupted" if metrics.get("interrupted") else "stopped early" if metrics.get("stopped_early") else ""
    facts = [
        f"{metrics.get('epochs', 0)} epochs" + (f" ({state})" if state else ""),
        f"{minutes:.1f} minutes",
        f"{config.get('backend', '?')} backend",
        f"{config.get('precision', '?')}",
        f"seed {config.get('seed', '?')}",
    ]
    return (
        f'<p class="headline">Test accuracy of the saved model: <b>{accuracy:.4f}</b> '
        f"(best epoch {metrics.get('best_test_accuracy', accuracy):.4f}; "
        f"test loss {metrics.get('test_loss') or 0:.4f}; "
        f"test images scored at {metrics.get('test_image_size', config.get('image_size'))} px)</p>"
        f"<p>{_text(', '.join(facts))}; data: <code>{_text(config.get('data'))}</code></p>"
    )


def _pictures(out, names):
    figures = []
    for name, caption in names:
        path = os.path.join(out, name)
        if not os.path.isfile(path):
            continue
        with open_regular(path) as f:
            data = base64.b64encode(f.read()).decode("ascii")
        figures.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{_text(caption)}">'
            f"<figcaption>{_text(name)}: {_text(caption)}</figcaption></figure>"
        )
    return f'<div class="pictures">{"".join(figures)}</div>' if figures else "<p>(no picture)</p>"


def _per_class(metrics):
    rows = [{"class": name, **values} for name, values in metrics.get("per_class", {}).items()]
    return _table(rows, number=True)


def _history(out):
    path = os.path.join(out, "history.csv")
    if not os.path.isfile(path):
        return "<p>(no finished epoch)</p>"
    rows = [{key: "" if value is None else value for key, value in row.items()} for row in read_history_rows(out)]
    return _table(rows, number=True)


def _settings(config):
    shown = {key: value for key, value in config.items() if key not in ("skipped_files",)}
    rows = [
        {"setting": key, "value": json.dumps(value) if isinstance(value, (dict, list)) else value}
        for key, value in shown.items()
    ]
    return _table(rows)


def _table(rows, number=False):
    if not rows:
        return "<p>(none)</p>"
    columns = list(rows[0])
    head = "".join(f"<th>{_text(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c, ""), number) for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value, number):
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        return f"<td>{_text(value)}</td>"
    if not number or isinstance(value, bool):
        return f"<td>{_text(value)}</td>"
    shown = f"{as_float:.0f}" if abs(as_float) >= 1000 else f"{as_float:.4g}"
    return f'<td class="number">{shown}</td>'
