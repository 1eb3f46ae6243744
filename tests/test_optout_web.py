"""The optout stage against a loopback web server: robots.txt, X-Robots-Tag, TDMRep, C2PA,
the user's list; per-origin fetches once; end to end through `curate run`."""
import concurrent.futures
import datetime
import glob
import hashlib
import io
import json
import urllib.parse

import imagehash
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from filters.optout import OptOut, robots_policy_from_fetch
from pipeline.cli import main
from pipeline.media.download import Downloader, DownloadParams
from pipeline.media.imaging import ResizeParams, process_image
from pipeline.core.records import Sample
from pipeline.core.stage import StageContext
from tests.localweb_faults import FaultyWeb
from tests.test_optout_rules import picture

LOOPBACK = DownloadParams(allow_private_network=True, retries=0, timeout=5)
ROBOTS_TXT = """\
User-agent: curate
Disallow: /private/

User-agent: *
Disallow: /
"""
TDMREP_JSON = [
    {"location": "/tdm/open/", "tdm-reservation": 0},
    {"location": "/tdm/", "tdm-reservation": 1},
    {"location": "/_fault/headers/tdm/", "tdm-reservation": 1},
]


def jpeg(colour, size=(40, 30)):
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG", quality=90)
    return out.getvalue()


# ------------------------------------------------------------ a C2PA-signed JPEG


def c2pa_signed_jpeg(image: bytes, training_use: str) -> bytes:
    """`image` with a C2PA manifest whose training-mining assertion says `training_use`,
    signed by a throwaway test CA (untrusted, which the stage does not check)."""
    c2pa = pytest.importorskip("c2pa")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject, issuer, public_key, signing_key, ca):
        usage = dict.fromkeys(("content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
                               "encipher_only", "decipher_only"), False)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "curate tests")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer),
                                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "curate tests")]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, **usage), critical=True)
        )
        if not ca:  # the C2PA certificate profile asks for these on the signer
            builder = (
                builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            )
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("test ca", "test ca", ca_key.public_key(), ca_key, ca=True)
    leaf = certificate("test signer", "test ca", key.public_key(), ca_key, ca=False)
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca)).decode()

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # ES256 wants raw r||s

    manifest = {
        "claim_generator_info": [{"name": "curate-tests", "version": "1"}],
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created",
                "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"}]}},
            {"label": "c2pa.training-mining", "data": {"entries": {
                "c2pa.ai_training": {"use": training_use},
                "c2pa.ai_generative_training": {"use": training_use},
                "c2pa.data_mining": {"use": training_use}}}},
        ],
    }
    context = c2pa.Context(c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}}))
    signer = c2pa.Signer.from_callback(sign, c2pa.C2paSigningAlg.ES256, chain, None)
    out = io.BytesIO()
    with c2pa.Builder(manifest, context=context) as builder:
        builder.sign(signer, "image/jpeg", io.BytesIO(image), out)
    return out.getvalue()


@pytest.fixture(scope="module")
def c2pa_images():
    return {
        "notAllowed": c2pa_signed_jpeg(jpeg("teal"), "notAllowed"),
        "allowed": c2pa_signed_jpeg(jpeg("olive"), "allowed"),
    }


# ------------------------------------------------------------ the web


@pytest.fixture(scope="module")
def web_root(tmp_path_factory, c2pa_images):
    root = tmp_path_factory.mktemp("web")
    (root / "robots.txt").write_text(ROBOTS_TXT)
    (root / ".well-known").mkdir()
    (root / ".well-known" / "tdmrep.json").write_text(json.dumps(TDMREP_JSON))
    for directory in ("private", "tdm/open", "gallery"):
        (root / directory).mkdir(parents=True)
    files = {
        "ok.jpg": jpeg("red"),
        "private/a.jpg": jpeg("green"),
        "tdm/a.jpg": jpeg("blue"),
        "tdm/open/a.jpg": jpeg("yellow"),
        "gallery/a.jpg": jpeg("purple"),
        "listed.jpg": jpeg("orange"),
        "by-hash.jpg": jpeg("navy"),
        "c2pa-no.jpg": c2pa_images["notAllowed"],
        "c2pa-yes.jpg": c2pa_images["allowed"],
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


@pytest.fixture()
def web(web_root):
    with FaultyWeb(web_root) as server:  # a fresh server per test: hit counts start at zero
        yield server


def stage(tmp_path=None, list_text=None, **params):
    if list_text is not None:
        path = tmp_path / "optout.txt"
        path.write_text(list_text)
        params["list"] = str(path)
    optout = OptOut(OptOut.Params(**params))
    optout.setup(StageContext(download=LOOPBACK))
    return optout


def sample(url):
    return Sample(key="000000", shard_id=0, url=url)


def respond(optout, url):
    """Fetch `url` like the pipeline does and run the stage's response checks."""
    the_sample = sample(url)
    result = Downloader(LOOPBACK).fetch(url)
    assert result.ok, result.reason
    return optout.check_response(the_sample, result), the_sample


def headers_url(web, path="a.jpg", **headers):
    return web.url(f"_fault/headers/{path}?{urllib.parse.urlencode(headers)}")


# ------------------------------------------------------------ robots.txt


def test_robots_txt_disallows_our_agent(web):
    optout = stage()
    assert optout.before_download(sample(web.url("ok.jpg"))).keep
    the_sample = sample(web.url("private/a.jpg"))
    assert optout.before_download(the_sample).reason == "optout_robots_txt"
    assert the_sample.fields["optout_rule"] == "robots.txt"


def test_robots_txt_star_group_applies_to_agents_without_their_own_group(web):
    optout = stage(user_agent_token="somebot")
    assert optout.before_download(sample(web.url("ok.jpg"))).reason == "optout_robots_txt"


def test_robots_txt_is_fetched_once_per_origin_even_from_many_threads(web):
    optout = stage()
    urls = [web.url(f"img{i}.jpg") for i in range(40)] + [web.url("private/x.jpg")] * 10
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        verdicts = list(pool.map(lambda url: optout.before_download(sample(url)), urls))
    assert [v.keep for v in verdicts] == [True] * 40 + [False] * 10
    assert web.hits("/robots.txt") == 1


def test_robots_txt_can_be_switched_off(web):
    assert stage(robots_txt=False).before_download(sample(web.url("private/a.jpg"))).keep
    assert web.hits("/robots.txt") == 0


@pytest.mark.parametrize(
    "reason, allowed",
    [("http_404", True), ("http_403", True), ("http_500", False), ("http_503", False), ("http_429", False),
     ("timeout", True), ("connection_error", True), ("dns_error", True), ("too_large", True)],
)
def test_robots_txt_fetch_failures_follow_rfc_9309(reason, allowed):
    assert robots_policy_from_fetch(reason, None).allows("http://a.com/x", "curate") is allowed


def test_policy_files_are_fetched_with_the_download_ssrf_guard(web):
    optout = OptOut(OptOut.Params())
    optout.setup(StageContext(download=DownloadParams(retries=0)))  # loopback not allowed
    # robots.txt would disallow this URL, but it is never fetched: a blocked
    # fetch allows, and the image download then fails with blocked_address.
    assert optout.before_download(sample(web.url("private/a.jpg"))).keep
    assert web.hits("/robots.txt") == 0


def test_an_origin_without_robots_txt_allows_everything(tmp_path):
    (tmp_path / "private").mkdir()
    with FaultyWeb(tmp_path) as server:
        assert stage().before_download(sample(server.url("private/a.jpg"))).keep
        assert server.hits("/robots.txt") == 1


# ------------------------------------------------------------ X-Robots-Tag


@pytest.mark.parametrize(
    "value, dropped",
    [("noai", True), ("noimageai", True), ("noindex, nofollow", True), ("curate: noai", True),
     ("otherbot: noai", False), ("index, follow", False)],
)
def test_x_robots_tag_header(web, value, dropped):
    verdict, the_sample = respond(stage(), headers_url(web, **{"X-Robots-Tag": value}))
    assert verdict.keep is not dropped
    if dropped:
        assert verdict.reason == "optout_x_robots_tag"
        assert the_sample.fields["optout_rule"].startswith("x-robots-tag: ")


def test_x_robots_tag_can_be_switched_off(web):
    assert respond(stage(x_robots_tag=False), headers_url(web, **{"X-Robots-Tag": "noai"}))[0].keep


# ------------------------------------------------------------ TDMRep


def test_tdmrep_file_reserves_a_location(web):
    optout = stage()
    assert respond(optout, web.url("tdm/a.jpg"))[0].reason == "optout_tdmrep"
    assert respond(optout, web.url("tdm/open/a.jpg"))[0].keep  # an earlier rule opens it
    assert respond(optout, web.url("ok.jpg"))[0].keep
    assert web.hits("/.well-known/tdmrep.json") == 1


def test_tdm_reservation_header_reserves(web):
    verdict, the_sample = respond(stage(), headers_url(web, **{"tdm-reservation": "1"}))
    assert verdict.reason == "optout_tdmrep"
    assert the_sample.fields["optout_rule"] == "tdm-reservation header"


def test_header_0_overrides_a_reserving_file(web):
    optout = stage()
    assert respond(optout, headers_url(web, "tdm/a.jpg"))[0].reason == "optout_tdmrep"  # the file alone
    assert respond(optout, headers_url(web, "tdm/a.jpg", **{"tdm-reservation": "0"}))[0].keep


def test_header_1_overrides_an_opening_file(web):
    assert respond(stage(), web.url("tdm/open/a.jpg"))[0].keep
    # The same location served with the header: the route ignores the path after headers/.
    assert respond(stage(), headers_url(web, "tdm/open/a.jpg", **{"tdm-reservation": "1"}))[0].reason == "optout_tdmrep"


def test_invalid_header_value_falls_back_to_the_file(web):
    assert respond(stage(), headers_url(web, "tdm/a.jpg", **{"tdm-reservation": "yes"}))[0].reason == "optout_tdmrep"


def test_tdmrep_of_the_redirect_target_origin_is_checked(web, tmp_path):
    with FaultyWeb(tmp_path) as other:  # no tdmrep.json on the origin of the listed URL
        url = other.url(f"_fault/redirect?to={urllib.parse.quote(web.url('tdm/a.jpg'), safe='')}")
        assert respond(stage(), url)[0].reason == "optout_tdmrep"
        assert other.hits("/.well-known/tdmrep.json") == 1 and web.hits("/.well-known/tdmrep.json") == 1


def test_tdmrep_can_be_switched_off(web):
    assert respond(stage(tdmrep=False), web.url("tdm/a.jpg"))[0].keep
    assert web.hits("/.well-known/tdmrep.json") == 0


# ------------------------------------------------------------ C2PA


def test_c2pa_training_not_allowed_is_dropped(web):
    verdict, the_sample = respond(stage(), web.url("c2pa-no.jpg"))
    assert verdict.reason == "optout_c2pa"
    assert "notAllowed" in the_sample.fields["optout_rule"]
    assert respond(stage(), web.url("c2pa-yes.jpg"))[0].keep
    assert respond(stage(c2pa=False), web.url("c2pa-no.jpg"))[0].keep


# ------------------------------------------------------------ the user's list


def test_list_url_prefix_and_domain_rules_before_download(web, tmp_path):
    port = urllib.parse.urlsplit(web.base_url).port
    optout = stage(tmp_path, f"url:{web.url('listed.jpg')}\nprefix:{web.url('gallery/')}\ndomain:localhost\n")
    assert optout.before_download(sample(web.url("listed.jpg"))).reason == "optout_list"
    gallery = sample(web.url("gallery/a.jpg"))
    assert optout.before_download(gallery).reason == "optout_list"
    assert gallery.fields["optout_rule"] == f"prefix:{web.url('gallery/')}"
    assert optout.before_download(sample(f"http://LOCALHOST:{port}/ok.jpg")).reason == "optout_list"
    assert optout.before_download(sample(web.url("ok.jpg"))).keep


def test_list_is_checked_on_the_final_url_after_redirects(web, tmp_path):
    optout = stage(tmp_path, f"url:{web.url('listed.jpg')}\n")
    redirect = web.url(f"_fault/redirect?to={urllib.parse.quote(web.url('listed.jpg'), safe='')}")
    assert optout.before_download(sample(redirect)).keep
    assert respond(optout, redirect)[0].reason == "optout_list"


def test_list_sha256_on_the_original_bytes(web, web_root, tmp_path):
    digest = hashlib.sha256((web_root / "by-hash.jpg").read_bytes()).hexdigest()
    optout = stage(tmp_path, f"sha256:{digest}\n")
    verdict, the_sample = respond(optout, web.url("by-hash.jpg"))
    assert verdict.reason == "optout_list" and the_sample.fields["optout_rule"] == f"sha256:{digest}"
    assert respond(optout, web.url("ok.jpg"))[0].keep


def test_list_phash_in_keep(tmp_path):
    original = picture((300, 200), seed=4)
    stored = process_image(original, ResizeParams(image_size=128))
    phash = str(imagehash.phash(Image.open(io.BytesIO(original))))
    optout = stage(tmp_path, f"phash:{phash}\n")
    kept = Sample("000000", 0, "http://a.com/x.jpg", image=stored.data, original_width=300, original_height=200)
    other = process_image(picture((300, 200), seed=9), ResizeParams(image_size=128))
    assert optout.keep(kept).reason == "optout_list"
    assert kept.fields["optout_rule"].startswith(f"phash:{phash}")
    assert optout.keep(Sample("000001", 0, "http://a.com/y.jpg", image=other.data,
                              original_width=300, original_height=200)).keep


def test_check_reports_a_bad_list_and_a_missing_list(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("domain:example.com\nurl:nope\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        OptOut(OptOut.Params(list=str(bad))).check()
    with pytest.raises(ValueError, match="cannot read"):
        OptOut(OptOut.Params(list=str(tmp_path / "missing.txt"))).check()


def test_the_stage_pickles_without_its_list_and_caches(web, tmp_path):
    import pickle

    optout = stage(tmp_path, "domain:example.com\n")
    optout.before_download(sample(web.url("ok.jpg")))
    copy = pickle.loads(pickle.dumps(optout))
    assert copy._state is None
    assert copy.before_download(sample("http://www.example.com/a.jpg")).reason == "optout_list"


# ------------------------------------------------------------ end to end


RECIPE = """\
download: {{timeout: 5, retries: 0, threads: 4}}
output: {{samples_per_shard: 5}}
stages:
  - optout: {{list: {list}}}
  - resolution: {{min_side: 1}}
"""


def test_curate_run_drops_each_signal_with_its_reason(web, web_root, tmp_path):
    port = urllib.parse.urlsplit(web.base_url).port
    digest = hashlib.sha256((web_root / "by-hash.jpg").read_bytes()).hexdigest()
    (tmp_path / "optout.txt").write_text(f"url:{web.url('listed.jpg')}\nsha256:{digest}\ndomain:localhost\n")
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(list=tmp_path / "optout.txt"))
    expected = {
        web.url("ok.jpg"): None,
        web.url("tdm/open/a.jpg"): None,
        web.url("c2pa-yes.jpg"): None,
        headers_url(web, "tdm/b.jpg", **{"tdm-reservation": "0"}): None,
        headers_url(web, **{"X-Robots-Tag": "otherbot: noai"}): None,
        web.url("listed.jpg"): "optout_list",
        web.url("by-hash.jpg"): "optout_list",
        f"http://localhost:{port}/ok.jpg": "optout_list",
        web.url("private/a.jpg"): "optout_robots_txt",
        web.url("tdm/a.jpg"): "optout_tdmrep",
        headers_url(web, "c.jpg", **{"tdm-reservation": "1"}): "optout_tdmrep",
        headers_url(web, "d.jpg", **{"X-Robots-Tag": "noai"}): "optout_x_robots_tag",
        web.url("c2pa-no.jpg"): "optout_c2pa",
    }
    pq.write_table(pa.table({"url": list(expected), "caption": [f"caption {i}" for i in range(len(expected))]}),
                   tmp_path / "urls.parquet")
    out = tmp_path / "out"
    args = ["run", "--recipe", str(tmp_path / "recipe.yaml"), "--input", str(tmp_path / "urls.parquet"),
            "--output", str(out), "--allow-private-network", "--direct_num_workers=1"]
    assert main(args) == 0

    rejects = pa.concat_tables([pq.read_table(p) for p in glob.glob(f"{out}/rejects/*.parquet")]).to_pylist()
    kept = pa.concat_tables([pq.read_table(p) for p in glob.glob(f"{out}/shards/*.parquet")]).to_pylist()
    assert {row["url"]: row["reason"] for row in rejects} == {u: r for u, r in expected.items() if r}
    assert {row["stage"] for row in rejects} == {"optout"}
    assert {row["url"] for row in kept} == {u for u, r in expected.items() if r is None}
    assert all("optout_rule" not in row for row in kept)
    assert all(json.loads(row["fields"])["optout_rule"] for row in rejects)
    counts = json.loads((out / "report" / "audit.json").read_text())["counts"]
    assert counts["rejected_by_stage"]["optout"] == {
        "optout_list": 3, "optout_robots_txt": 1, "optout_tdmrep": 2, "optout_x_robots_tag": 1, "optout_c2pa": 1}
    # One worker: each policy file was fetched once for the origin (127.0.0.1; localhost is on the list).
    assert web.hits("/robots.txt") == 1
    assert web.hits("/.well-known/tdmrep.json") == 1


def test_curate_run_refuses_a_bad_list_before_running(tmp_path, capsys):
    (tmp_path / "optout.txt").write_text("domain:ok.com\nfoo:bar\n")
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(list=tmp_path / "optout.txt"))
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/a.jpg\n")
    args = ["run", "--recipe", str(tmp_path / "recipe.yaml"), "--input", str(tmp_path / "urls.txt"),
            "--output", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "stage 'optout'" in err and "optout.txt:2: unknown kind 'foo'" in err
    assert not (tmp_path / "out").exists()


def test_before_download_answers_at_once_only_once_the_origin_robots_txt_is_known(web):
    """The event-loop fetcher runs the check on the loop only when it cannot block (no robots.txt to fetch)."""
    optout = stage()
    first = sample(web.url("ok.jpg"))
    assert not optout.answers_at_once(first)
    optout.before_download(first)
    assert optout.answers_at_once(sample(web.url("private/a.jpg")))  # same origin: its robots.txt is cached
    assert stage(robots_txt=False).answers_at_once(sample(web.url("ok.jpg")))
