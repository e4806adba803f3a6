"""The analysis plan: the rules hash changes with any rule, and the protocol page's change log records the current one."""
from pathlib import Path

from skillgraft import plan
from skillgraft.chapters import single_task

PROTOCOL = Path(__file__).resolve().parents[1] / "book" / "protocol.ipynb"


def test_the_change_log_records_the_current_rules():
    recorded = plan.recorded_hashes(PROTOCOL)
    assert recorded, f"{PROTOCOL.name} records no rules hash"
    assert recorded[-1] == plan.rules_hash(), (
        f"a verdict rule changed (rules hash {plan.rules_hash()}, the change log's newest is {recorded[-1]}): add an "
        f"entry to the change log of {PROTOCOL.name} saying what changed and what the earlier rule found, ending "
        f"with 'rules hash `{plan.rules_hash()}`'")


def test_a_changed_threshold_or_rule_body_changes_the_hash(monkeypatch):
    before = plan.rules_hash()
    monkeypatch.setattr(single_task, "RECOVERY", 0.9)
    assert plan.rules_hash() != before
    monkeypatch.undo()
    assert plan.rules_hash() == before

    def task_rule(v):  # another body under the same name
        return "holds"
    monkeypatch.setattr(single_task, "task_rule", task_rule)
    assert plan.rules_hash() != before


def test_every_rule_named_exists_and_every_claim_is_planned():
    import importlib

    for module, names in plan.RULES.items():
        mod = importlib.import_module(module)
        assert all(hasattr(mod, n) for n in names), module
    assert [e.claim for e in plan.PLAN] == ["C1", "C1c", "C2", "C3", "C4", "C5"]
    assert list(plan.frame().columns) == ["claim", "estimand", "unit", "baseline or null", "rule", "secondary"]
