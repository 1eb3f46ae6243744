"""The reject reasons of the opt-out signals, shared by the `optout` stage, `curate takedown` and the report."""

# Reject reasons, one per kind of signal.
REASON_LIST = "optout_list"
REASON_ROBOTS_TXT = "optout_robots_txt"
REASON_TDMREP = "optout_tdmrep"
REASON_X_ROBOTS_TAG = "optout_x_robots_tag"
REASON_C2PA = "optout_c2pa"
OPTOUT_REASONS = (REASON_LIST, REASON_ROBOTS_TXT, REASON_TDMREP, REASON_X_ROBOTS_TAG, REASON_C2PA)

# Reject field naming what matched ("domain:example.com", "robots.txt", ...).
RULE_FIELD = "optout_rule"
