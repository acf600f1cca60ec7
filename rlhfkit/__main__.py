"""``python -m rlhfkit``: points to the package's command-line tools."""

print(
    "rlhfkit tools:\n"
    "  python -m rlhfkit.embedded   build the embedded default (tiny model, offline tokenizer, toy data)\n"
    "  python -m rlhfkit.inspect_data    show how a dataset is read: schema, rows kept and dropped, examples"
)
