"""report/optout.json: the rows dropped by an opt-out signal, by reason, list rule kind and domain."""
from __future__ import annotations

import collections
import json
from typing import Any

from pipeline.media.optout.reasons import OPTOUT_REASONS, REASON_LIST, RULE_FIELD
from pipeline.media.optout.rule_list import KINDS
from pipeline.media.optout.urls import host_of


def optout_report(rejects_rows: list[dict], top: int = 50) -> dict[str, Any]:
    """Opt-out statistics from rejects rows (the rejects parquet as dicts), for report/optout.json.

    Counts rows whose reason is an opt-out reason (whatever the stage: the
    `optout` stage at run time, `takedown` afterwards): by reason, by list
    rule kind (domain/url/prefix/sha256/phash), and the `top` hosts with the
    most opted-out rows, each with its own reason breakdown.
    """
    by_reason: collections.Counter[str] = collections.Counter()
    by_stage: collections.Counter[str] = collections.Counter()
    by_list_rule_kind: collections.Counter[str] = collections.Counter()
    by_domain: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for row in rejects_rows:
        reason = row.get("reason")
        if reason not in OPTOUT_REASONS:
            continue
        by_reason[reason] += 1
        by_stage[row.get("stage") or ""] += 1
        by_domain[host_of(row.get("url") or "") or "(no host)"][reason] += 1
        if reason == REASON_LIST:
            by_list_rule_kind[_rule_kind(row.get("fields"))] += 1
    ranked = sorted(by_domain.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    return {
        "total": sum(by_reason.values()),
        "by_reason": dict(by_reason.most_common()),
        "by_stage": dict(by_stage.most_common()),
        "by_list_rule_kind": dict(by_list_rule_kind.most_common()),
        "domains": len(by_domain),
        "top_domains": [
            {"domain": domain, "count": sum(reasons.values()), "by_reason": dict(reasons.most_common())}
            for domain, reasons in ranked[:top]
        ],
    }


def _rule_kind(fields: Any) -> str:
    """The kind of the matched list rule, from a rejects row's `fields` (JSON text or dict)."""
    if isinstance(fields, str):
        try:
            fields = json.loads(fields)
        except ValueError:
            fields = {}
    rule = str((fields or {}).get(RULE_FIELD) or "")
    kind = rule.partition(":")[0]
    return kind if kind in KINDS else "unknown"
