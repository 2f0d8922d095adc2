#!/usr/bin/env python3
"""Checks cordon's OCSF decision records against the OCSF 1.5.0 schema, offline.

Usage: scripts/ocsf_check.py FILE...   (one JSON record per line; `-` reads stdin)

Each record is validated by ocsf-emitter (PyPI, https://github.com/Hacker0x01/ocsf-emitter),
which carries the OCSF 1.5.0 models: its pydantic model of Network Activity (class 4001) and its
`validate`, which adds the invariants the model does not encode (class and category identity,
type_uid = class_uid * 100 + activity_id, sibling names, the schema version). Its models allow
fields they do not know, so the Security Control profile's fields that cordon sets (action,
disposition, policy) are checked here too: each id within the profile's enum and its name the
enum's caption, and `policy` through the package's own Policy model.

Exit status: 0 every record valid (prints how many), 1 a record is not (prints the file, line
and each problem), 3 ocsf-emitter is not installed.
"""

import json
import sys

try:
    import ocsf_emitter
    from ocsf_emitter import models
    from ocsf_emitter.errors import InvalidFindingError
except ImportError as e:  # the Rust test skips (loudly) on this status unless told not to
    print(f"ocsf-emitter is not installed: {e}", file=sys.stderr)
    sys.exit(3)

# OCSF 1.5.0, profile security_control: action_id and disposition_id (the ones cordon may use).
ACTIONS = {0: "Unknown", 1: "Allowed", 2: "Denied", 3: "Observed", 4: "Modified", 99: "Other"}
DISPOSITIONS = {0: "Unknown", 1: "Allowed", 2: "Blocked", 99: "Other"}


def problems_of(record):
    problems = []
    try:
        event = models.NetworkActivity.model_validate(record)
        ocsf_emitter.validate(event)
    except InvalidFindingError as e:
        problems += [str(e)] + list(getattr(e, "field_errors", []) or [])
    except Exception as e:  # pydantic's ValidationError names each field
        problems.append(str(e))
    if "security_control" not in (record.get("metadata", {}).get("profiles") or []):
        problems.append("metadata.profiles: security_control is not declared")
    for field, enum in (("action", ACTIONS), ("disposition", DISPOSITIONS)):
        uid = record.get(field + "_id")
        if uid not in enum:
            problems.append(f"{field}_id: {uid!r} is not in OCSF 1.5.0's enum")
        elif record.get(field) != enum[uid]:
            problems.append(f"{field}: {record.get(field)!r} is not the caption of {field}_id {uid}")
    try:
        models.Policy.model_validate(record.get("policy"))
    except Exception as e:
        problems.append(f"policy: {e}")
    if not isinstance(record.get("firewall_rule", {}).get("name"), str):
        problems.append("firewall_rule.name: missing")
    return problems


def main(paths):
    checked = 0
    bad = 0
    for path in paths:
        lines = sys.stdin if path == "-" else open(path, encoding="utf-8")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            checked += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                print(f"{path}:{n}: not JSON: {e}")
                bad += 1
                continue
            problems = problems_of(record)
            if problems:
                bad += 1
                print(f"{path}:{n}: not a valid OCSF 1.5.0 Network Activity event:")
                for p in problems:
                    print(f"  {p}")
    if bad:
        return 1
    print(f"{checked} records valid (OCSF {ocsf_emitter.defaults.OCSF_SCHEMA_VERSION}, "
          f"ocsf-emitter {ocsf_emitter.__version__})")
    return 0 if checked else 1


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
