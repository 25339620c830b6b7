#!/usr/bin/env python3
"""Checks JSON documents against one of the JSON Schemas of docs/schemas/.

usage: check_schema.py SCHEMA [--strict] [--lines] FILE...

Each FILE (`-`: standard input) is one JSON document, or with --lines one
document per non-empty line (the event log). Every error is printed as
`FILE[:LINE]: PATH: MESSAGE` (PATH as `$.containers["61dbbc5fe4b3"].status`);
with no error, one `ok:` line says how many documents were checked.

--strict: the published schemas let readers' documents carry fields they do
not describe (readers must ignore unknown fields). With --strict every object
schema that has `"type": "object"` and lists `properties` is checked with
`additionalProperties: false`, so a field the program writes but the schema
(and docs/formats.md) does not describe is an error. Schemas without
`"type": "object"` (the `if` of a conditional, say) are left as they are.

Exit status: 0 every document is valid, 1 at least one is not (or is not
JSON), 2 the command line or the schema is wrong. Needs the `jsonschema`
module (Debian: python3-jsonschema, 4.10 or later: draft 2020-12).
"""

import argparse
import copy
import json
import re
import sys

try:
    import jsonschema
    from jsonschema.validators import validator_for
except ImportError:  # pragma: no cover - said, not hidden
    print("check_schema.py: the python3 module jsonschema is missing "
          "(Debian: apt-get install python3-jsonschema)", file=sys.stderr)
    sys.exit(2)


def strict(schema):
    """A copy of `schema` with additionalProperties forced to false on every
    object schema that lists properties."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            kind = node.get("type")
            is_object = kind == "object" or (isinstance(kind, list) and "object" in kind)
            if is_object and "properties" in node:
                node["additionalProperties"] = False
            for key, value in node.items():
                # `enum` and `const` hold data, not schemas.
                if key not in ("enum", "const"):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)
    return schema


IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_path(parts):
    """`$.a.b[3]["x-y"]` for the path parts of an error."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += "[%d]" % part
        elif IDENTIFIER.match(part):
            out += "." + part
        else:
            out += "[%s]" % json.dumps(part)
    return out


def describe(error, base, indent="  "):
    """The error's lines: its path and message, then, for a failed anyOf or
    oneOf, why each alternative failed."""
    path = list(base) + list(error.absolute_path)
    lines = ["%s: %s" % (json_path(path), error.message)]
    for sub in sorted(error.context or [], key=lambda e: (list(map(str, e.absolute_path)), e.message)):
        for line in describe(sub, [], indent):
            lines.append(indent + "alternative %s" % line)
    return lines


def documents(path, lines):
    """(label, document or ValueError) for each document of the file."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        yield path, ValueError("cannot read: %s" % e)
        return
    if not lines:
        try:
            yield path, json.loads(text)
        except ValueError as e:
            yield path, ValueError("not JSON: %s" % e)
        return
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        label = "%s:%d" % (path, number)
        try:
            yield label, json.loads(line)
        except ValueError as e:
            yield label, ValueError("not JSON: %s" % e)


def main(argv):
    parser = argparse.ArgumentParser(
        prog="check_schema.py",
        description="Checks JSON documents against a JSON Schema (docs/schemas/).")
    parser.add_argument("schema", help="the schema file")
    parser.add_argument("files", nargs="+", metavar="FILE", help="documents to check (- for standard input)")
    parser.add_argument("--strict", action="store_true",
                        help="no property the schema does not list (additionalProperties: false)")
    parser.add_argument("--lines", action="store_true", help="one JSON document per non-empty line")
    args = parser.parse_args(argv)

    try:
        with open(args.schema, encoding="utf-8") as f:
            schema = json.load(f)
    except (OSError, ValueError) as e:
        print("%s: cannot read the schema: %s" % (args.schema, e), file=sys.stderr)
        return 2
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as e:
        print("%s: not a valid schema: %s" % (args.schema, e.message), file=sys.stderr)
        return 2
    if args.strict:
        schema = strict(schema)
    validator = cls(schema, format_checker=jsonschema.FormatChecker())

    checked, failed = 0, 0
    for path in args.files:
        for label, doc in documents(path, args.lines):
            checked += 1
            if isinstance(doc, ValueError):
                failed += 1
                print("%s: %s" % (label, doc))
                continue
            try:
                errors = sorted(validator.iter_errors(doc),
                                key=lambda e: (list(map(str, e.absolute_path)), e.message))
            except jsonschema.exceptions.RefResolutionError as e:
                print("%s: a $ref does not resolve: %s" % (args.schema, e), file=sys.stderr)
                return 2
            if errors:
                failed += 1
            for error in errors:
                for line in describe(error, []):
                    print("%s: %s" % (label, line))
    if checked == 0:
        print("no document to check in %s" % ", ".join(args.files))
        return 1
    mode = "strict" if args.strict else "lax"
    if failed:
        print("FAILED: %d of %d documents invalid against %s (%s)" % (failed, checked, args.schema, mode))
        return 1
    print("ok: %d documents valid against %s (%s)" % (checked, args.schema, mode))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
