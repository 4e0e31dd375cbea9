"""Feature files → parsed, statically validated definitions: header annotations, Jinja rendering with line
mapping, sqlglot parsing, name resolution and the view DAG."""
