"""Tables you can paste: rows of dicts as GitHub markdown (`markdown_table`), and the epochs of `fit` calls as
the lesson's table (`history_table`).

Example:
```python
print(markdown_table([{"class": "rose", "images": 641}]))
```
"""

from kflowers.errors import display_name


def markdown_table(rows, columns=None):
    """Rows of dicts as a GitHub markdown table (floats to 4 significant digits: 0.9531, 7.9, 123.5)."""
    rows = list(rows)
    columns = columns or list(rows[0]) if rows else columns or []

    def cell(value):
        if isinstance(value, float):
            return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        return display_name(str(value))  # no terminal escapes from class or file names

    lines = [
        "| " + " | ".join(map(display_name, map(str, columns))) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def history_table(*histories):
    """The epochs of one or more `fit` calls, one after the other, as the lesson's table (markdown).

    Keras names the metrics on `validation_data` `val_*`; the examples and
    `kflowers train` pass the test split there, so they are `test_*` here.

    Args:
        *histories: `keras.callbacks.History` objects (what `fit` returns), in
            the order they trained.

    Example:
    ```python
    first = model.fit(train_ds, validation_data=test_ds, epochs=2)
    second = model.fit(train_ds, validation_data=test_ds, epochs=4, initial_epoch=2)
    print(history_table(first, second))
    ```
    """
    rows = []
    for history in histories:
        logs = history.history
        for i in range(len(next(iter(logs.values()), []))):
            row = {"epoch": len(rows) + 1}
            for key, values in logs.items():
                row[key.replace("val_", "test_", 1) if key.startswith("val_") else key] = float(values[i])
            rows.append(row)
    return markdown_table(rows)
