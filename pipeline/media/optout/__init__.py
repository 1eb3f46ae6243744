"""Creators' opt-out: the user's opt-out list and the machine-readable signals.

Shared by the `optout` stage (filters/optout.py) and `curate takedown`
(pipeline/tools/takedown.py).  Everything here is a pure function of its input (a
URL, headers, bytes, a file); fetching robots.txt and tdmrep.json is the
stage's job.  One module per topic:

    reasons        the reject reasons, one per kind of signal, and the rule field
    urls           URL and host normalisation (how list rules and URLs compare)
    rule_list      the user's opt-out list: parsing, loading, `OptOutList` matching
    x_robots_tag   the X-Robots-Tag response header
    tdmrep         W3C TDMRep: the header value and /.well-known/tdmrep.json
    c2pa_manifests C2PA manifests embedded in the image
    phash          the perceptual hash of a stored image, for `phash:` rules
"""
