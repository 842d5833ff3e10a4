"""The pure decisions of rotating the mesh's CAs (lib/carotation.py, lib/reissue.py)."""
import datetime as dt

import pytest

from lib.reissue import Intermediate, Rotation, needs_reissue, select_for_rotation

NOW = dt.datetime(2026, 11, 29, 8, 0, tzinfo=dt.timezone.utc)


def inter(name, fp, days):
    return Intermediate(name, fp, None if days is None else NOW + dt.timedelta(days=days, hours=1))


def test_expiring_within_picks_the_intermediates_that_expire_soon_and_those_missing():
    local = {"a": inter("a", "f1", 10), "b": inter("b", "f2", 400), "c": inter("c", None, None)}
    assert select_for_rotation(local, None, NOW) == ["a", "b", "c"]
    assert select_for_rotation(local, 30, NOW) == ["a", "c"]
    assert select_for_rotation(local, 10, NOW) == ["a", "c"]
    assert select_for_rotation(local, 9, NOW) == ["c"]


def test_an_intermediate_is_reissued_once_per_rotation():
    rotation = Rotation("2026-11-29T08:00:00Z", {"a": "old", "b": None})
    assert needs_reissue(rotation, "a", inter("a", "old", 5))
    assert not needs_reissue(rotation, "a", inter("a", "new", 3650)), "already re-issued by an earlier run"
    assert needs_reissue(rotation, "a", inter("a", None, None)), "moved to the backup, not made yet"
    assert needs_reissue(rotation, "b", inter("b", None, None))
    assert not needs_reissue(rotation, "b", inter("b", "made", 3650))
    assert not needs_reissue(rotation, "c", inter("c", "x", 1)), "not part of this rotation"
    assert rotation.backup_name == "20261129T080000Z-intermediates"


def test_a_root_transition_advances_one_stage_only_when_every_cluster_is_in_place_and_has_waited():
    from lib.carotation import ClusterView, Transition, decide

    day = dt.timedelta(hours=24)
    assert decide(None, [ClusterView("a", True, False)], NOW, day).kind == "start"
    t = Transition(1, "old", "new", "2026-11-28T00:00:00Z")
    fresh = [ClusterView("a", True, True, NOW - dt.timedelta(hours=2)), ClusterView("b", True, True, NOW - day * 2)]
    wait = decide(t, fresh, NOW, day)
    assert wait.kind == "wait" and wait.ready_at == NOW + dt.timedelta(hours=22), "the last cluster's time counts"
    assert decide(t, fresh, NOW, dt.timedelta(0)).kind == "advance"
    assert decide(t, fresh, NOW, dt.timedelta(0)).stage == 2
    behind = decide(t, [fresh[0], ClusterView("b", True, False), ClusterView("c", False, False)], NOW, dt.timedelta(0))
    assert (behind.kind, behind.stage, behind.behind, behind.unreachable) == ("converge", 1, ["b"], ["c"])
    last = Transition(3, "old", "new", "2026-11-28T00:00:00Z")
    assert decide(last, fresh, NOW, day).kind == "finish", "dropping the old root needs no further wait"


def test_a_completion_cut_short_is_finished_before_any_new_transition_starts():
    from lib.carotation import ClusterView, completed_here, decide
    from lib.names import TRANSITION_ANNOTATION

    current = "ab" * 32  # the root certs/ holds now: the transition's new root
    note = {TRANSITION_ANNOTATION: f"stage=3 root={current[:16]} since=2026-11-29T08:00:00Z"}
    assert completed_here(current, note)
    assert not completed_here("cd" * 32, note), "a record of a move to another root is not this one's"
    assert not completed_here(current, {})
    views = [ClusterView("a", True, False), ClusterView("b", True, False, completing=True),
             ClusterView("c", False, False, completing=True)]
    move = decide(None, views, NOW, dt.timedelta(hours=24))
    assert (move.kind, move.behind) == ("complete", ["b"]), "only what can be reached is finished"
    assert decide(None, views[:1], NOW, dt.timedelta(0)).kind == "start"


def test_each_stage_puts_the_right_roots_in_cacerts():
    from lib.carotation import cacerts_for_stage, holds

    inter = {"ca-cert.pem": b"I", "ca-key.pem": b"K", "cert-chain.pem": b"I+R", "root-cert.pem": b"R"}
    old = b"-----BEGIN CERTIFICATE-----\nOLD\n-----END CERTIFICATE-----\n"
    new = b"-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----\n"
    assert cacerts_for_stage(1, inter, old, new)["root-cert.pem"] == old + new
    assert cacerts_for_stage(2, inter, old, new)["root-cert.pem"] == old + new + new, "Istio's own test's sequence"
    assert cacerts_for_stage(3, inter, old, new)["root-cert.pem"] == new, "the very bytes stage 2 holds"
    assert cacerts_for_stage(None, inter, old, new)["root-cert.pem"] == b"R", "as the Makefile made it"
    assert cacerts_for_stage(1, inter, old, new)["ca-key.pem"] == b"K"
    want = cacerts_for_stage(1, inter, old, new)
    seen = {"ca-cert.pem": b"I", "cert-chain.pem": b"I+R", "root-cert.pem": old + new}
    assert holds(seen, want)
    assert not holds({**seen, "root-cert.pem": new + old}, want), "the same roots in another order: istiod 1.29 refuses them"
    assert not holds({**seen, "root-cert.pem": old}, want)
    assert not holds({**seen, "ca-cert.pem": b"other"}, want)
    assert not holds(None, want)


SUPPORTED = [(1, 28), (1, 29), (1, 30), (1, 31)]


def _pem(body: bytes) -> bytes:
    import base64
    return b"-----BEGIN CERTIFICATE-----\n" + base64.b64encode(body) + b"\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize("version", SUPPORTED)
@pytest.mark.parametrize("old", [_pem(b"old root"), _pem(b"old root").rstrip(b"\n")],
                         ids=["single-root", "no-final-newline"])
def test_every_stage_is_a_bundle_every_supported_istiod_takes(version, old):
    """From the single root a mesh starts with, each stage's bundle is taken by istiod's rule of each
    version setup-mesh supports (the sandbox's model of pilot/pkg/bootstrap/istio_ca.go handleEvent)."""
    from lib.carotation import stage_roots
    from tests.sandbox.istiodca import accepts_root_change, certificate_set

    new = _pem(b"new root")
    held = old
    for stage in (1, 2, 3):
        bundle = stage_roots(stage, old, new)
        assert accepts_root_change(version, held, bundle), f"Istio {version}: stage {stage} refused"
        held = bundle
        assert certificate_set(bundle) == ({_b(old), _b(new)} if stage < 3 else {_b(new)})


def _b(pem: bytes) -> bytes:
    from tests.sandbox.istiodca import certificate_set
    return next(iter(certificate_set(pem)))


def test_the_rules_differ_by_version_as_istio_does():
    from tests.sandbox.istiodca import accepts_root_change

    old, new, other = _pem(b"old"), _pem(b"new"), _pem(b"other")
    for version in SUPPORTED:
        set_rule = version >= (1, 30)
        assert accepts_root_change(version, old + new, new + old) is set_rule, "reordered: bytes up to 1.29"
        assert accepts_root_change(version, old + new, new) is True
        assert accepts_root_change(version, old, new) is False, "no containment at all"
        assert accepts_root_change(version, old + new, new + other) is False


def test_the_sandbox_finds_certificates_in_a_bundle_as_gos_pem_decode_does():
    """istiod 1.30+ compares root bundles as sets of the blocks Go's encoding/pem finds: two files glued
    without a newline hide both certificates; a line end, CRLF, trailing blanks or text around the blocks
    do not (cases of Go's own pem_test.go: TestBadDecode, TestDecode)."""
    from tests.sandbox.istiodca import accepts_root_change, certificate_set

    a, b = _pem(b"root a"), _pem(b"root b")
    assert certificate_set(a + b) == {b"root a", b"root b"}
    assert certificate_set(a.rstrip(b"\n") + b) == set(), "END line followed by text: rejected, and its BEGIN too"
    assert certificate_set(a.rstrip(b"\n") + b" \t\n" + b) == {b"root a", b"root b"}
    assert certificate_set(a.replace(b"\n", b"\r\n")) == {b"root a"}
    assert certificate_set(b"subject=CN = Root A\n" + a + b"trailing words") == {b"root a"}
    assert certificate_set(b"x" + a) == set(), "BEGIN must start a line"
    assert certificate_set(a.replace(b"END CERTIFICATE", b"END X509 CRL")) == set(), "END must name the same type"
    assert certificate_set(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n" + b) == {b"root b"}
    assert certificate_set(b"") == set() and certificate_set(b"not a pem") == set()
    # So a glued stage-1 bundle is refused by 1.30+, where bytes.Contains (1.29) would take it.
    glued = a.rstrip(b"\n") + b
    assert not accepts_root_change((1, 30), a, glued) and accepts_root_change((1, 29), a.rstrip(b"\n"), glued)


def test_min_wait_takes_units_and_refuses_nonsense():
    import pytest

    from lib.errors import ConfigError
    from lib.carotation import parse_duration

    assert parse_duration("24h") == dt.timedelta(hours=24)
    assert parse_duration("90m") == dt.timedelta(minutes=90)
    assert parse_duration("0") == dt.timedelta(0)
    assert parse_duration("2") == dt.timedelta(hours=2)
    for bad in ("soon", "-1h", "", "inf", "nan", "1e300d", "3651d"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_a_min_wait_given_is_written_back_as_the_option_takes_it():
    """Hints repeat the user's --min-wait: what they paste must mean the same wait."""
    from lib.carotation import format_duration, parse_duration

    for text, shown in (("0", "0"), ("45s", "45s"), ("90m", "90m"), ("24h", "1d"), ("36h", "36h"), ("2d", "2d"),
                        ("1.5", "90m")):
        assert format_duration(parse_duration(text)) == shown
        assert parse_duration(shown) == parse_duration(text)


def test_the_new_root_is_named_apart_from_the_one_it_replaces():
    from lib.carotation import next_root_name

    first = next_root_name("Root CA", NOW)
    assert first != "Root CA" and first.startswith("Root CA ")
    later = next_root_name(first, NOW + dt.timedelta(days=3650))
    assert later.startswith("Root CA ") and later.count(" ") == 2 and later != first, "one time, the latest"
    assert next_root_name(None, NOW).startswith("Root CA ")
    assert next_root_name("Example Inc Root", NOW).startswith("Example Inc Root ")


def test_a_transition_whose_roots_are_gone_is_a_message_not_a_crash(tmp_path):
    import pytest

    from lib.errors import ConfigError
    from lib.carotation import Transition, desired_cacerts

    for folder in ("certs", "certs-next"):
        (tmp_path / folder / "c1").mkdir(parents=True, exist_ok=True)
        for name in ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"):
            (tmp_path / folder / "c1" / name).write_text("x")
    (tmp_path / "certs" / "root-cert.pem").write_text("old")
    with pytest.raises(ConfigError) as caught:
        desired_cacerts(tmp_path, "c1", Transition(2, "old", "new", "2026-11-29T08:00:00Z"))
    assert "new root" in caught.value.message and "certs-next" in caught.value.message


def test_only_a_finish_cut_short_makes_the_new_root_the_workspaces(tmp_path):
    from lib.carotation import Transition, backup_dir, resume_finish, save_transition

    (tmp_path / "certs-next").mkdir()
    (tmp_path / "certs-next" / "root-cert.pem").write_text("new")
    save_transition(tmp_path, Transition(1, "old", "new", "2026-11-29T08:00:00Z"))
    resume_finish(tmp_path)  # certs/ deleted by hand at stage 1: the clusters still need the old root
    assert not (tmp_path / "certs").exists() and (tmp_path / "certs-next" / "root-cert.pem").exists()
    save_transition(tmp_path, Transition(3, "old", "new", "2026-11-29T08:00:00Z"))
    resume_finish(tmp_path)  # stage 3, but the old root was not moved to its backup by a finish
    assert not (tmp_path / "certs").exists()
    backup = backup_dir(tmp_path, Transition(3, "old", "new", "2026-11-29T08:00:00Z").backup_name)
    backup.mkdir(parents=True)
    resume_finish(tmp_path)
    assert (tmp_path / "certs" / "root-cert.pem").read_text() == "new" and not (tmp_path / "certs-next").exists()
    assert not (tmp_path / "certs" / "transition.json").exists()
    resume_finish(tmp_path / "not-there")  # nothing to do, and no error


def test_a_move_from_the_clusters_root_keeps_their_intermediate_then_issues_from_the_workspaces_root(tmp_path):
    """The clusters run on a root whose key this workspace does not hold (another workspace made the mesh):
    that root is the old one, the workspace's own the new one. Stage 1 keeps each cluster's intermediate
    (certificates only: its key stays in the cluster), then the workspace's intermediates; every bundle is
    one each supported istiod takes over the one before, starting from what the clusters hold."""
    from lib.carotation import (FORMER_DIR, Transition, desired_cacerts, finish_transition, issuing_dir,
                                load_transition, record_former, save_transition)
    from lib.casteps import workspace_certs
    from tests.sandbox.istiodca import accepts_root_change

    theirs, ours = _pem(b"their root"), _pem(b"our root")
    (tmp_path / "certs" / "c1").mkdir(parents=True)
    (tmp_path / "certs" / "root-cert.pem").write_bytes(ours)
    mine = {"ca-cert.pem": b"OI", "ca-key.pem": b"OK", "cert-chain.pem": b"OI+OR", "root-cert.pem": ours}
    for name, data in mine.items():
        (tmp_path / "certs" / "c1" / name).write_bytes(data)
    record_former(tmp_path, theirs, {"c1": {"ca-cert.pem": b"TI", "cert-chain.pem": b"TI+TR"}})
    assert sorted(p.name for p in (tmp_path / FORMER_DIR).rglob("*")) == ["c1", "ca-cert.pem", "cert-chain.pem",
                                                                         "root-cert.pem"], "no key"
    started = Transition(1, "theirs", "ours", "2026-11-29T08:00:00Z", foreign_start=True)
    save_transition(tmp_path, started)
    assert load_transition(tmp_path) == started and not (tmp_path / "certs-next").exists()

    held = theirs
    for stage in (1, 2, 3):
        t = Transition(stage, "theirs", "ours", started.started, foreign_start=True)
        want = desired_cacerts(tmp_path, "c1", t)
        assert want["root-cert.pem"] == {1: theirs + ours, 2: theirs + ours + ours, 3: ours}[stage]
        for version in SUPPORTED:
            assert accepts_root_change(version, held, want["root-cert.pem"]), f"Istio {version}: stage {stage}"
        held = want["root-cert.pem"]
        if stage == 1:
            assert want == {"ca-cert.pem": b"TI", "cert-chain.pem": b"TI+TR", "root-cert.pem": theirs + ours}
            assert workspace_certs(tmp_path, t, ()).roots == [theirs, ours]
        else:
            assert (want["ca-cert.pem"], want["ca-key.pem"]) == (b"OI", b"OK")
            assert workspace_certs(tmp_path, t, ()).roots == [ours, theirs]
        assert issuing_dir(tmp_path, t) == tmp_path / "certs"
        assert desired_cacerts(tmp_path, "c2", t) is None, "a cluster the start did not find gets the workspace's"

    backup = finish_transition(tmp_path, Transition(3, "theirs", "ours", started.started, foreign_start=True))
    assert (backup / "root-cert.pem").read_bytes() == theirs and not (tmp_path / FORMER_DIR).exists()
    assert load_transition(tmp_path) is None
    assert (tmp_path / "certs" / "root-cert.pem").read_bytes() == ours, "the workspace's root stays where it is"


def test_a_move_from_the_clusters_root_starts_only_from_one_root_setup_mesh_made_everywhere(tmp_path):
    """Refused before any change, with a hint: clusters on different roots, a CA setup-mesh did not make,
    a root bundle that is not one certificate (a move under way elsewhere), a cluster that cannot be read."""
    import pytest

    from lib.errors import ConfigError, MeshError
    from lib.kube import Observed
    from lib.rootstages import foreign_start
    from tests.test_status import _ca, _cacerts, _pem, _topology

    ours, theirs, third = _ca("Ours"), _ca("Theirs"), _ca("Third")
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "root-cert.pem").write_bytes(_pem(ours[0]))
    clusters = list(_topology(tmp_path).clusters)

    def seen(**held):
        return {c.context: Observed(reachable=True, cacerts=held.get(c.context, _cacerts(theirs)),
                                    cacerts_labelled=c.context != held.get("unlabelled")) for c in clusters}

    assert foreign_start(clusters, seen(c1=_cacerts(ours), c2=_cacerts(ours), c3=_cacerts(ours)), tmp_path, None) \
        is None, "on the workspace's own root: the ordinary move"
    former = foreign_start(clusters, seen(), tmp_path, None)
    assert former.root == _pem(theirs[0]) and sorted(former.intermediates) == ["c1", "c2", "c3"]
    assert all(set(files) == {"ca-cert.pem", "cert-chain.pem"} for files in former.intermediates.values()), "no key"
    refusals = [
        (seen(c2=_cacerts(third)), ConfigError, "one and the same root"),
        (seen(c3=_cacerts(ours)), ConfigError, "c3 do(es) not run on the root the other clusters run on"),
        (seen(unlabelled="c2"), ConfigError, "c2 was not made by setup-mesh"),
        (seen(c1={**_cacerts(theirs), "root-cert.pem": _pem(theirs[0]) + _pem(third[0])}), ConfigError,
         "one and the same root"),
        ({**seen(), "c2": Observed(reachable=False)}, MeshError, "c2 cannot be read"),
    ]
    for observed, kind, words in refusals:
        with pytest.raises(kind) as caught:
            foreign_start(clusters, observed, tmp_path, None)
        assert words in caught.value.message and caught.value.hint, caught.value.message


def test_a_move_starts_from_a_mesh_in_step_and_a_stage_counts_a_cluster_that_holds_it_and_says_so(tmp_path):
    """Both read the assessment's cacerts finding: current (outside a move: what certs/ holds; mid-move: the
    stage's bundle, recorded on istio-system)."""
    from lib.carotation import Transition, desired_cacerts
    from lib.errors import MeshError
    from lib.kube import Observed, Tools
    from lib.names import TRANSITION_ANNOTATION
    from lib.rootstages import cluster_views, require_in_step
    from tests.test_status import _ca, _cacerts, _pem, _topology

    class Log:
        def close(self):
            pass

    ours, new = _ca("Ours"), _ca("Next")
    for folder, root in (("certs", ours), ("certs-next", new)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "root-cert.pem").write_bytes(_pem(root[0]))
    clusters = list(_topology(tmp_path).clusters)
    for c in clusters:
        (tmp_path / "certs" / c.name).mkdir()
        for name, data in {**_cacerts(ours), "ca-key.pem": b"key"}.items():
            (tmp_path / "certs" / c.name / name).write_bytes(data)
    held = {c.context: Observed(reachable=True, cacerts=desired_cacerts(tmp_path, c.name, None), cacerts_labelled=True)
            for c in clusters}
    require_in_step(clusters, held, tmp_path, Log(), "again", Tools())
    earlier = {**held, "c2": Observed(reachable=True, cacerts=_cacerts(ours), cacerts_labelled=True)}
    with pytest.raises(MeshError) as caught:
        require_in_step(clusters, earlier, tmp_path, Log(), "again", Tools())
    assert "(c2)" in caught.value.message
    # A cluster that cannot be read is said to be so, with the command that checks it (not "run apply").
    with pytest.raises(MeshError) as caught:
        require_in_step(clusters, {**held, "c3": Observed(reachable=False, error="timeout")}, tmp_path, Log(), "again",
                        Tools())
    assert caught.value.message.startswith("c3 cannot be read")
    assert caught.value.hint == "check access with `kubectl --context c3 get namespace istio-system`, then `again`"
    # An intermediate rotation left unfinished is finished first.
    from lib.reissue import Rotation, save_rotation
    save_rotation(tmp_path, Rotation("2026-11-29T08:00:00Z", {"c2": None}))
    with pytest.raises(MeshError) as caught:
        require_in_step(clusters, held, tmp_path, Log(), "again", Tools())
    assert caught.value.message.startswith("an intermediate rotation is unfinished")
    assert "rotate-certs" in caught.value.hint
    save_rotation(tmp_path, None)

    t = Transition(1, "ours", "ffff" * 16, "2026-11-29T08:00:00Z")
    stage = {TRANSITION_ANNOTATION: t.annotation("2026-11-29T09:00:00Z")}
    moving = {c.context: Observed(reachable=True, cacerts=desired_cacerts(tmp_path, c.name, t), cacerts_labelled=True,
                                  annotations=dict(stage) if c.context != "c3" else {}) for c in clusters}
    moving["c1"] = held["c1"]  # not at the stage's bundle yet
    views = {v.context: v.in_place for v in cluster_views(clusters, {**moving, "c1": held["c1"]}, tmp_path, t, "")}
    assert views == {"c1": False, "c2": True, "c3": False}, "c3 holds the bundle, its istio-system records no stage"


def test_a_stage_goes_no_further_while_an_istiod_refused_it_or_its_roots_could_not_be_read():
    """Before the next stage, every primary's istiod must be seen to publish cacerts' roots; a read that
    failed confirms nothing (else the move went on past an istiod that kept its old roots)."""
    from lib.carotation import Transition
    from lib.config import Cluster
    from lib.errors import MeshError
    from lib.kube import Observed, Tools
    from lib.rootstages import require_istiod_took

    class Log:
        closed = False

        def close(self):
            self.closed = True

    class Client:
        def __init__(self, published):
            self.published = published

        def published_roots(self, clusters):
            return {c.context: self.published[c.context] for c in clusters if c.context in self.published}

    clusters = [Cluster("c1", "n1", "c1"), Cluster("c2", "n2", "c2"), Cluster("r1", "n1", "r1", primary="c1")]
    bundle = b"old+new roots"
    observed = {c.context: Observed(reachable=True, cacerts={"root-cert.pem": bundle}) for c in clusters}
    t = Transition(1, "aa" * 32, "bb" * 32, "2026-11-29T08:00:00Z")
    require_istiod_took(clusters, observed, Tools(), Client({"c1": bundle, "c2": bundle}), t, Log(), "istiod")

    log = Log()
    with pytest.raises(MeshError) as unread:
        require_istiod_took(clusters, observed, Tools(), Client({"c1": bundle}), t, log, "istiod")
    assert "the roots istiod publishes in c2 could not be read: the move goes no further" in unread.value.message
    assert "`kubectl --context c2 get configmap istio-ca-root-cert -n istio-system`" in unread.value.hint
    assert log.closed
    with pytest.raises(MeshError) as refused:
        require_istiod_took(clusters, observed, Tools(), Client({"c1": bundle, "c2": b"old root"}), t, Log(), "istiod")
    assert "istiod in c2 has not taken its root bundle" in refused.value.message


def test_the_record_of_a_move_reads_back_as_written_and_a_damaged_or_doubled_one_is_refused(tmp_path):
    import pytest

    from lib.carotation import Transition, load_transition, save_transition
    from lib.errors import ConfigError

    (tmp_path / "certs-next").mkdir()
    (tmp_path / "certs-former").mkdir()
    assert load_transition(tmp_path) is None
    ours = Transition(2, "a" * 64, "b" * 64, "2026-11-29T08:00:00Z")
    save_transition(tmp_path, ours)
    assert load_transition(tmp_path) == ours and not load_transition(tmp_path).foreign_start
    assert (tmp_path / "certs-next" / "transition.json").stat().st_mode & 0o777 == 0o600
    theirs = Transition(1, "c" * 64, "d" * 64, "2026-11-30T08:00:00Z", foreign_start=True)
    save_transition(tmp_path, theirs)
    with pytest.raises(ConfigError) as doubled:
        load_transition(tmp_path)
    assert doubled.value.message == (f"two moves to a new root are recorded ({tmp_path / 'certs-next' / 'transition.json'}, "
                                     f"{tmp_path / 'certs-former' / 'transition.json'})")
    assert "only one move can be under way" in doubled.value.hint
    (tmp_path / "certs-former" / "transition.json").unlink()
    record = tmp_path / "certs-next" / "transition.json"
    for damaged, words in (("{", "cannot read the root transition's record"),
                           ('{"stage": 2}', "cannot read the root transition's record"),
                           ('{"stage": 4, "old_root": "a", "new_root": "b", "started": "x"}', "stage 4 is not one of 1..3")):
        record.write_text(damaged)
        with pytest.raises(ConfigError) as refused:
            load_transition(tmp_path)
        assert words in refused.value.message and str(record) in refused.value.message and refused.value.hint


def _issued(name: str, issuer=None):
    """A CA certificate and its key valid now: the sandbox's istiod checks validity with openssl, at the real time."""
    import datetime as dt

    from tests.test_status import _ca
    return _ca(name, issuer, days=365, now=dt.datetime.now(dt.timezone.utc))


def _files(inter, *roots) -> dict[str, bytes]:
    from cryptography.hazmat.primitives import serialization

    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    key = inter[1].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return {"ca-cert.pem": pem(inter[0]), "ca-key.pem": key, "cert-chain.pem": pem(inter[0]) + pem(roots[-1][0]),
            "root-cert.pem": b"".join(pem(r[0]) for r in roots)}


def test_the_sandboxs_istiod_takes_a_bundle_only_when_its_intermediate_verifies_to_its_roots_with_its_key():
    """Verify (keycertbundle.go), which istiod's handleEvent applies after its root checks."""
    import datetime as dt

    from tests.sandbox.istiodca import bundle_flaw

    old, new = _issued("Root CA"), _issued("Root CA")  # the same name: only the signature tells them apart
    old_inter, new_inter = _issued("Intermediate CA", old), _issued("Intermediate CA", new)
    assert bundle_flaw(_files(old_inter, old)) is None
    assert bundle_flaw({**_files(old_inter, old), "cert-chain.pem": b""}) is None, "signed by the root itself"
    assert bundle_flaw(_files(new_inter, old, new)) is None, "stage 2: the new intermediate under [old, new]"
    assert bundle_flaw(_files(old_inter, old, new)) is None, "stage 1: the old intermediate under [old, new]"
    assert "cannot verify the cert" in bundle_flaw(_files(old_inter, new)), "stage 3 with the old intermediate"
    assert "cannot verify the cert" in bundle_flaw(_files(new_inter, old)), "the new intermediate before its root"
    mismatched = {**_files(old_inter, old), "ca-key.pem": _files(new_inter, new)["ca-key.pem"]}
    assert bundle_flaw(mismatched).startswith("the cert does not match the key")
    assert bundle_flaw({**_files(old_inter, old), "ca-key.pem": b"junk"}).startswith("failed to parse private key")
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=400)
    assert "cannot verify the cert" in bundle_flaw(_files(old_inter, old), at=int(later.timestamp())), "expired"


def test_the_sandboxs_istiod_keeps_its_roots_when_the_new_bundle_does_not_verify():
    from types import SimpleNamespace

    from tests.sandbox.istiodca import HeldCA, _reload

    old, new = _issued("Root CA"), _issued("Root CA")
    old_inter, new_inter = _issued("Intermediate CA", old), _issued("Intermediate CA", new)
    start = _files(old_inter, old)["root-cert.pem"]
    cluster = SimpleNamespace(istiod_cas={"pod": HeldCA("istio-system", "default", (1, 30), True, True, start, 1)})
    held = cluster.istiod_cas["pod"]
    assert not _reload(cluster, "istio-system", _files(new_inter, new))  # not a superset: the root rule refuses
    assert held.refused == "Updating new ROOT-CA not supported" and held.roots == start
    stage3_old_intermediate = {**_files(old_inter, old, new), "root-cert.pem": _files(new_inter, new)["root-cert.pem"]}
    stage1 = _files(new_inter, old, new)
    stage1_wrong = {**stage1, "ca-cert.pem": _files(_issued("Intermediate CA", _issued("Root CA")), old)["ca-cert.pem"]}
    assert not _reload(cluster, "istio-system", stage1_wrong)
    assert held.refused.startswith("Failed to update new Plug-in CA certs: cannot verify the cert") and held.roots == start
    assert _reload(cluster, "istio-system", stage1) and held.roots == stage1["root-cert.pem"] and held.refused == ""
    assert not _reload(cluster, "istio-system", stage3_old_intermediate)
    assert held.refused.startswith("Failed to update new Plug-in CA certs") and held.roots == stage1["root-cert.pem"]


def test_finishing_a_move_makes_the_new_root_the_workspaces_keeps_the_old_in_a_private_backup_and_a_rerun_changes_nothing(tmp_path):
    import stat

    from lib.carotation import Transition, finish_transition, load_transition, save_transition

    for folder, root in (("certs", "old root"), ("certs-next", "new root")):
        (tmp_path / folder / "c1").mkdir(parents=True)
        (tmp_path / folder / "root-cert.pem").write_text(root)
        (tmp_path / folder / "root-key.pem").write_text(f"{root} key")
        (tmp_path / folder / "c1" / "ca-key.pem").write_text(f"c1 under {root}")
    done = Transition(3, "o" * 64, "n" * 64, "2026-11-29T08:00:00Z")
    save_transition(tmp_path, done)
    (tmp_path / "backups").mkdir(mode=0o755)  # made by hand, or by an older release
    (tmp_path / "backups").chmod(0o755)
    backup = finish_transition(tmp_path, done)
    assert backup.parent == tmp_path / "backups"
    assert (backup / "root-cert.pem").read_text() == "old root" and (backup / "c1" / "ca-key.pem").read_text() == "c1 under old root"
    assert (tmp_path / "certs" / "root-cert.pem").read_text() == "new root" and not (tmp_path / "certs-next").exists()
    assert load_transition(tmp_path) is None and not (tmp_path / "certs" / "transition.json").exists()
    for private in (tmp_path / "backups", backup, backup / "c1"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o700, private
    assert stat.S_IMODE((backup / "root-key.pem").stat().st_mode) == 0o600
    # Run again (a run that finished but was not told so): the workspace's root stays where it is.
    assert finish_transition(tmp_path, done) == backup
    assert (tmp_path / "certs" / "root-cert.pem").read_text() == "new root"
    assert (backup / "root-cert.pem").read_text() == "old root"


def test_root_bundles_annotations_and_times_are_read_as_written_by_hand_or_by_other_tools():
    """A root-cert.pem holding two roots (stage 1 and 3 of a move), with the text openssl or an editor puts
    around them; the transition annotation setup-mesh writes; times with an offset or none."""
    from lib.carotation import iso, parse_annotation, parse_iso, split_pems, utc_now

    body = [b"-----BEGIN CERTIFICATE-----\nMIIB" + bytes([65 + i]) * 8 + b"\n-----END CERTIFICATE-----\n" for i in range(2)]
    bundle = b"subject=O = Istio, CN = Root CA\r\n" + body[0].replace(b"\n", b"\r\n") + b"\n\n# new root\n" + body[1] + b"  \n"
    found = split_pems(bundle)
    assert len(found) == 2 and found[1] == body[1], "each root, ending with one newline"
    assert found[0].startswith(b"-----BEGIN CERTIFICATE-----") and found[0].endswith(b"-----END CERTIFICATE-----\n")
    assert split_pems(None) == [] and split_pems(b"no certificate here") == []

    assert parse_annotation("stage=2 root=0123456789abcdef since=2026-12-01T08:00:00Z") == {
        "stage": "2", "root": "0123456789abcdef", "since": "2026-12-01T08:00:00Z"}
    assert parse_annotation("note=a=b stray") == {"note": "a=b"}, "a value may hold '='; a word without one is skipped"

    utc = dt.timezone.utc
    assert parse_iso("2026-12-01T10:00:00+02:00") == dt.datetime(2026, 12, 1, 8, 0, tzinfo=utc)
    assert parse_iso("2026-12-01T08:00:00Z") == parse_iso("2026-12-01T08:00:00") == dt.datetime(2026, 12, 1, 8, 0, tzinfo=utc)
    assert parse_iso("yesterday") is None and parse_iso("") is None
    # What setup-mesh writes: UTC to the second, with a Z, whatever the zone of the moment given.
    assert iso(dt.datetime(2026, 12, 1, 10, 0, 0, 500, tzinfo=dt.timezone(dt.timedelta(hours=2)))) == "2026-12-01T08:00:00Z"
    now = utc_now()
    assert now.tzinfo == utc and now.microsecond == 0 and parse_iso(iso(now)) == now
