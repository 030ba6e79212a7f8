from quotagate.engine import CreditEngine


async def test_create_and_consume(engine: CreditEngine) -> None:
    created = await engine.upsert_account("alice", tier="pro")
    assert created.created and created.balance == 1000
    charge = await engine.consume("alice", "premium_feature", 2)
    assert charge.cost == 10 and charge.remaining == 990
