#!/usr/bin/env python3
"""Checks OCSF events, one JSON object per line, against OCSF 1.5.0 with ocsf-emitter (PyPI),
a validator cordon did not write: each line is parsed into the model of its own class_uid
(API Activity 6003 for the audit trail, Network Activity 4001 for decision records) and run
through ocsf_emitter.validate, which re-checks the schema and the invariants (class and
category, type_uid = class_uid * 100 + activity_id, sibling names, metadata.version).

Usage: ocsf_check_audit.py FILE [--class UID ...]
Exit 0 when every line is a valid event (of the classes given, if any); 1 otherwise, naming
each bad line and field. A file with no events fails: a check over nothing proves nothing.
"""

import json
import sys

from ocsf_emitter import _models, defaults
from ocsf_emitter.errors import InvalidFindingError
from ocsf_emitter.validate import validate


def check(path, classes):
    bad, good = [], 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append(f"{path}:{n}: not JSON: {e}")
                continue
            uid = event.get("class_uid")
            if classes and uid not in classes:
                bad.append(f"{path}:{n}: class_uid {uid!r}, expected one of {sorted(classes)}")
                continue
            spec = defaults.class_spec_by_uid(uid) if isinstance(uid, int) else None
            if spec is None:
                bad.append(f"{path}:{n}: class_uid {uid!r} is not an OCSF 1.5.0 class")
                continue
            model = getattr(_models, spec.model_name)
            try:
                validate(model.model_validate(event))
                good += 1
            except InvalidFindingError as e:
                bad.append(f"{path}:{n}: {e}")
            except Exception as e:  # pydantic's ValidationError on construction
                bad.append(f"{path}:{n}: {spec.class_name}: {e}")
    return good, bad


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    path, rest = argv[1], argv[2:]
    classes = set()
    while rest:
        if rest[0] == "--class" and len(rest) > 1:
            classes.add(int(rest[1]))
            rest = rest[2:]
        else:
            print(f"unknown argument {rest[0]!r}", file=sys.stderr)
            return 2
    good, bad = check(path, classes)
    for b in bad:
        print(b)
    if good == 0 and not bad:
        print(f"{path}: no events")
        return 1
    print(f"{path}: {good} valid OCSF {defaults.OCSF_SCHEMA_VERSION} events, {len(bad)} invalid")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
