"""The rule hook and the engine that runs an ordered chain of rules over events.

**The rule protocol.** A rule is any callable ``rule(event, context)`` with
``name`` and ``version`` attributes (see :class:`Rule`; decorate a plain
function with :func:`rule`). Rules form an ordered chain. Each rule receives
the event and a read-only :class:`RuleContext` holding the price book, the
pricing settings and ``context.charges``, the charges produced so far for this
event by the rules before it. It returns:

* ``None``: "this rule does not apply"; the charges so far pass on unchanged.
* an iterable of :class:`~shardbill.rules.Charge`: the *complete new list* of
  charges for the event. A pricing rule returns the charges so far plus its
  own (``return context.add(context.charge(event, amount=...))``); a routing
  rule returns them re-routed or split. An empty iterable means "no charges"
  (the event is free, or the rule dropped what came before).

After the chain, an event that no rule applied to (every rule returned
``None``) is rejected as unpriced, unless the engine was built with
``reject_unpriced=False``; an event some rule applied to and that ends with no
charges is accepted with none.

**Failure is per event.** If a rule raises, or returns something that is not
a valid charge for this event, the event is rejected with the rule's
``name@version``, the reason and the exception type, and the rest of the batch
goes on (:class:`BatchPricing`). Rules must be pure and deterministic: the
same event and price book give the same charges, which makes replays exact.

**Discovery.** Rules are registered in code (pass them to
:class:`RulesEngine`) or published by any installed distribution under the
entry-point group ``shardbill.rules`` (the built-ins are published the same
way); :meth:`RulesEngine.from_entry_points` builds a chain by name.
"""

from __future__ import annotations

import decimal
import importlib
import importlib.metadata
import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Final

import attrs

from shardbill import money
from shardbill.errors import ConfigurationError, InvalidInputError, RuleError
from shardbill.protocols import Rule
from shardbill.rules.events import (
    Account,
    Charge,
    DimensionValue,
    UsageEvent,
    _check_account,
    _check_text,
    _check_token,
    _checked_currency,
    _replace_charge,
    _to_dimensions,
    _unchecked_charge,
)
from shardbill.rules.pricebook import PriceBook, PricingSettings

__all__ = [
    "ENTRY_POINT_GROUP",
    "BatchPricing",
    "FunctionRule",
    "PricingRejection",
    "PricingResult",
    "Rule",
    "RuleContext",
    "RulesEngine",
    "available_rules",
    "load_rule",
    "rule",
]

ENTRY_POINT_GROUP: Final = "shardbill.rules"
"""The entry-point group rules are published under."""


RuleFunction = Callable[[UsageEvent, "RuleContext"], Iterable[Charge] | None]


def _rule_name(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    _check_token(attribute.name, value)


def _rule_version(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    _check_text(attribute.name, value, max_length=64)


@attrs.frozen(kw_only=True)
class FunctionRule:
    """A plain function adapted to the :class:`Rule` protocol (what :func:`rule` returns).

    Attributes:
        function: ``function(event, context) -> Iterable[Charge] | None``.
        name: the rule's name.
        version: the rule's version.
    """

    function: RuleFunction
    name: str = attrs.field(validator=_rule_name)
    version: str = attrs.field(validator=_rule_version)

    def __call__(self, event: UsageEvent, context: RuleContext, /) -> Iterable[Charge] | None:
        """Call the function."""
        return self.function(event, context)

    def __reduce__(self) -> tuple[Callable[[str, str, str, str], FunctionRule], tuple[str, ...]]:
        # Pickle by reference: ``@rule`` rebinds the function's module name to this object,
        # so the function itself cannot be pickled by name.
        module = getattr(self.function, "__module__", None)
        qualname = getattr(self.function, "__qualname__", "")
        if not isinstance(module, str) or "<" in qualname:
            raise pickle.PicklingError(
                f"rule {self.name!r} wraps {qualname or self.function!r}, which is not "
                "importable by name; define rule functions at module level to send them "
                "to other processes"
            )
        return (_restore_function_rule, (module, qualname, self.name, self.version))


def _restore_function_rule(module: str, qualname: str, name: str, version: str) -> FunctionRule:
    """Find a pickled FunctionRule again by its function's module and name."""
    found: object = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    if isinstance(found, FunctionRule) and (found.name, found.version) == (name, version):
        return found
    return FunctionRule(function=found, name=name, version=version)  # type: ignore[arg-type]


def rule(*, name: str, version: str) -> Callable[[RuleFunction], FunctionRule]:
    """Decorate a function ``(event, context) -> Iterable[Charge] | None`` into a rule.

    Args:
        name: the rule's name, a token such as ``"acme.fax"``.
        version: the rule's version.

    Returns:
        A decorator that returns a :class:`FunctionRule`.

    Example:
        >>> @rule(name="acme.flat_fee", version="1")
        ... def flat_fee(event, context):
        ...     if event.product != "fax":
        ...         return None
        ...     return context.add(context.charge(event, amount=Decimal("0.05")))
        >>> flat_fee.name, flat_fee.version
        ('acme.flat_fee', '1')
    """

    def decorate(function: RuleFunction) -> FunctionRule:
        return FunctionRule(function=function, name=name, version=version)

    return decorate


@attrs.frozen(kw_only=True)
class RuleContext:
    """What a rule may read while pricing one event (read-only).

    Attributes:
        price_book: the engine's price book.
        settings: the pricing scale and rounding.
        charges: the charges produced so far for this event by earlier rules.
        rule: the name of the rule being called (recorded by :meth:`charge`).
        rule_version: its version (recorded by :meth:`charge`).
    """

    price_book: PriceBook
    settings: PricingSettings
    charges: tuple[Charge, ...]
    rule: str
    rule_version: str

    def charge(
        self,
        event: UsageEvent,
        *,
        amount: Decimal | int,
        quantity: Decimal | int | None = None,
        account: Account | None = None,
        product: str | None = None,
        dimensions: Mapping[str, DimensionValue] | None = None,
        currency: str | None = None,
    ) -> Charge:
        """Make a charge for ``event``, rounding ``amount`` once to the pricing scale.

        This is the pricing-scale rounding point: the exact ``amount`` is
        rounded with ``settings.rounding`` to ``settings.scale`` places. The
        charge records this rule's name and version and the event's id and
        time; the other fields default to the event's.

        Args:
            event: the event being priced.
            amount: the exact amount (a Decimal or int; a float raises MoneyTypeError).
            quantity: the quantity charged; default the event's.
            account: the paying account; default the event's.
            product: the product; default the event's.
            dimensions: the charge's aggregate dimensions; default the event's.
            currency: the currency; default the price book's.

        Returns:
            The charge.
        """
        settings = self.settings
        if type(event) is not UsageEvent:
            _check_event(event, 0)
        # The event's fields are valid already; only what the rule passes is checked.
        return _unchecked_charge(
            event_id=event.event_id,
            account=event.account if account is None else _check_account("account", account),
            product=event.product if product is None else _check_token("product", product),
            dimensions=event.dimensions if dimensions is None else _to_dimensions(dimensions),
            quantity=(
                event.quantity if quantity is None else money.require_decimal(quantity, "quantity")
            ),
            amount=money.quantize(amount, settings.scale, settings.rounding),
            currency=self.price_book.currency if currency is None else _checked_currency(currency),
            time=event.time,
            rule=_check_token("rule", self.rule),
            rule_version=_check_text("rule_version", self.rule_version, max_length=64),
            scale=settings.scale,
            part=0,
            parts=1,
        )

    def add(self, *charges: Charge) -> tuple[Charge, ...]:
        """The charges so far followed by ``charges``: what a pricing rule returns.

        Args:
            *charges: the rule's new charges.

        Returns:
            ``context.charges + charges``.
        """
        return self.charges + charges


@attrs.frozen(kw_only=True)
class PricingRejection:
    """Why one event was not priced.

    Attributes:
        event_id: the event's id.
        rule: ``name@version`` of the rule that failed, or None when the
            engine rejected the event itself (no rule applied; a correction
            for a product that does not accept them).
        reason: what went wrong, in words.
        error_type: the type of the exception raised.
    """

    event_id: str
    rule: str | None
    reason: str
    error_type: type[Exception]

    def to_error(self) -> RuleError:
        """This rejection as a :class:`~shardbill.errors.RuleError` to raise.

        Returns:
            The error; its ``rule`` attribute is the rule (``"engine"`` for the engine).
        """
        who = self.rule or "engine"
        return RuleError(
            f"event {self.event_id!r} rejected by {who}: {self.error_type.__name__}: {self.reason}",
            rule=who,
        )


@attrs.frozen(kw_only=True)
class PricingResult:
    """The outcome of pricing one event.

    Attributes:
        event_id: the event's id.
        charges: its charges (empty if rejected, or if it costs nothing).
        rejection: why it was rejected, or None if it was priced.
    """

    event_id: str
    charges: tuple[Charge, ...] = ()
    rejection: PricingRejection | None = None

    @property
    def accepted(self) -> bool:
        """Whether the event was priced (possibly with no charges)."""
        return self.rejection is None


@attrs.frozen(kw_only=True)
class BatchPricing:
    """The outcome of pricing a batch of events.

    Attributes:
        charges: the accepted events' charges, in event order, then chain order.
        rejected: one rejection per rejected event, in event order.
        events: how many events were priced or rejected.
    """

    charges: tuple[Charge, ...]
    rejected: tuple[PricingRejection, ...]
    events: int


def _label(item: Rule) -> str:
    return f"{item.name}@{item.version}"


def _check_rule(candidate: object, where: str) -> Rule:
    name = getattr(candidate, "name", None)
    version = getattr(candidate, "version", None)
    if not callable(candidate) or not isinstance(name, str) or not isinstance(version, str):
        raise ConfigurationError(
            f"{where} is not a rule: {candidate!r}; a rule is a callable (event, context) with "
            "str attributes name and version (decorate a function with "
            "@shardbill.rules.rule(name=..., version=...))"
        )
    try:
        _check_token("name", name)
        _check_text("version", version, max_length=64)
    except InvalidInputError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    return candidate  # type: ignore[return-value]  # checked structurally above


def _tuple_of_rules(value: Iterable[Rule]) -> tuple[Rule, ...]:
    return tuple(value)


def _check_chain(
    instance: object, attribute: attrs.Attribute[tuple[Rule, ...]], value: tuple[Rule, ...]
) -> None:
    seen: set[str] = set()
    for index, item in enumerate(value):
        checked = _check_rule(item, f"rules[{index}]")
        if checked.name in seen:
            raise ConfigurationError(
                f"rules[{index}]: the rule name {checked.name!r} appears twice in the chain; "
                "each rule may appear once"
            )
        seen.add(checked.name)


def _price_book(instance: object, attribute: attrs.Attribute[PriceBook], value: object) -> None:
    if not isinstance(value, PriceBook):
        raise ConfigurationError(
            f"'price_book' must be a PriceBook: {value!r}; load one with PriceBook.load(path)"
        )


@attrs.frozen(kw_only=True)
class RulesEngine:
    """Runs an ordered chain of rules over events: events in, charges out.

    Pure: no I/O, no state between events; the same events and price book
    always give the same charges.

    Attributes:
        rules: the chain, in order.
        price_book: the price book every rule reads.
        settings: the pricing scale and rounding; default the price book's.
        reject_unpriced: reject events no rule applied to (default True), so a
            product nobody prices is reported rather than billed as free.

    Example:
        >>> from shardbill.rules import comms
        >>> engine = comms.engine()
        >>> from datetime import datetime, UTC
        >>> event = UsageEvent(event_id="e-1", account=7, time=datetime(2026, 1, 5, tzinfo=UTC),
        ...                    product="voice", quantity=61,
        ...                    dimensions={"direction": "outbound", "country": "US"})
        >>> [c.amount for c in engine.price(event).charges]  # 2 started minutes at 0.0140
        [Decimal('0.028000')]
    """

    rules: tuple[Rule, ...] = attrs.field(converter=_tuple_of_rules, validator=_check_chain)
    price_book: PriceBook = attrs.field(validator=_price_book)
    settings: PricingSettings = attrs.field()
    reject_unpriced: bool = True
    _chain: tuple[tuple[Rule, str, str, str], ...] = attrs.field(init=False, repr=False, eq=False)

    @settings.default
    def _settings_default(self) -> PricingSettings:
        settings = getattr(self.price_book, "settings", None)  # validated just after
        return settings if isinstance(settings, PricingSettings) else PricingSettings()

    def __attrs_post_init__(self) -> None:
        # After the validators: every rule has a valid name and version by now.
        chain = tuple((item, item.name, item.version, _label(item)) for item in self.rules)
        object.__setattr__(self, "_chain", chain)

    @classmethod
    def from_entry_points(
        cls,
        *,
        names: Sequence[str],
        price_book: PriceBook,
        settings: PricingSettings | None = None,
        reject_unpriced: bool = True,
    ) -> RulesEngine:
        """Build an engine from rules published under the ``shardbill.rules`` entry points.

        Args:
            names: the rule names, in chain order.
            price_book: the price book.
            settings: the pricing settings; default the price book's.
            reject_unpriced: see the class.

        Returns:
            The engine.

        Raises:
            ConfigurationError: for an unknown name (listing the known ones) or
                an entry point that does not load a valid rule.
        """
        rules = [load_rule(name) for name in names]
        return cls(
            rules=rules,
            price_book=price_book,
            settings=price_book.settings if settings is None else settings,
            reject_unpriced=reject_unpriced,
        )

    def price(self, event: UsageEvent) -> PricingResult:
        """Price one event.

        Args:
            event: the event.

        Returns:
            Its charges, or its rejection. A failing rule never raises here.
        """
        with decimal.localcontext(money.PRICING):
            charges, rejection = self._run(_check_event(event, 0))
        return PricingResult(event_id=event.event_id, charges=charges, rejection=rejection)

    def price_batch(self, events: Iterable[UsageEvent]) -> BatchPricing:
        """Price a batch: each failing event is rejected alone; the others go on.

        Args:
            events: the events, in order.

        Returns:
            All accepted charges and all rejections.

        Raises:
            InvalidInputError: if an item is not a UsageEvent (a programming
                error: build events with ``UsageEvent`` or ``UsageEvent.from_dict``).
        """
        charges: list[Charge] = []
        rejected: list[PricingRejection] = []
        count = 0
        run = self._run
        with decimal.localcontext(money.PRICING):
            for count, event in enumerate(events, start=1):
                produced, rejection = run(_check_event(event, count - 1))
                if rejection is None:
                    charges.extend(produced)
                else:
                    rejected.append(rejection)
        return BatchPricing(charges=tuple(charges), rejected=tuple(rejected), events=count)

    def _run(self, event: UsageEvent) -> tuple[tuple[Charge, ...], PricingRejection | None]:
        price_book = self.price_book
        settings = self.settings
        if event.correction:
            priced = price_book.products.get(event.product)
            if priced is not None and not priced.corrections:
                return (), PricingRejection(
                    event_id=event.event_id,
                    rule=None,
                    reason=(
                        f"product {event.product!r} does not accept correction events; set "
                        f"corrections = true under [products.{event.product}] in the price "
                        "book to allow them"
                    ),
                    error_type=InvalidInputError,
                )
        charges: tuple[Charge, ...] = ()
        applied = False
        scale = settings.scale
        for item, name, version, label in self._chain:
            context = RuleContext(
                price_book=price_book,
                settings=settings,
                charges=charges,
                rule=name,
                rule_version=version,
            )
            try:
                produced = item(event, context)
                if produced is None:
                    continue
                result = tuple(produced)
                for charge in result:
                    if (
                        type(charge) is not Charge
                        or charge.event_id != event.event_id
                        or charge.time != event.time
                        or charge.scale != scale
                    ):
                        _bad_charge(charge, event, scale)
            except Exception as exc:  # a rule's failure rejects its event alone
                return (), PricingRejection(
                    event_id=event.event_id,
                    rule=label,
                    reason=_reason(exc, event),
                    error_type=type(exc),
                )
            charges = result
            applied = True
        if len(charges) > 1:
            # One event, several charges: numbered, so the writer can tell a part
            # from a repeat and refuse an event delivered incomplete.
            n = len(charges)
            charges = tuple(_replace_charge(c, part=i, parts=n) for i, c in enumerate(charges))
        elif charges and charges[0].parts != 1:
            charges = (_replace_charge(charges[0], part=0, parts=1),)
        if not applied and self.reject_unpriced:
            return (), PricingRejection(
                event_id=event.event_id,
                rule=None,
                reason=(
                    f"no rule in the chain ({', '.join(r.name for r in self.rules)}) priced "
                    f"product {event.product!r}; add a rule or a price book entry for it"
                ),
                error_type=InvalidInputError,
            )
        return charges, None


def _reason(exc: Exception, event: UsageEvent) -> str:
    """Why a rule failed, in words; a decimal signal's own text is only its class list."""
    if isinstance(exc, decimal.DecimalException):
        return (
            f"the charge for quantity {event.quantity} cannot be computed exactly: the result "
            "needs more digits than decimal arithmetic carries, or is undefined "
            f"(decimal.{type(exc).__name__}); check the quantity (a unit mix-up, a missing "
            "decimal point?) or split such volumes over several events"
        )
    return str(exc) or type(exc).__name__


def _check_event(event: object, position: int) -> UsageEvent:
    if type(event) is not UsageEvent and not isinstance(event, UsageEvent):
        raise InvalidInputError(
            f"item {position} is not a UsageEvent but {type(event).__name__}: {event!r:.80}; "
            "build events with UsageEvent(...) or UsageEvent.from_dict(mapping)"
        )
    return event


def _bad_charge(charge: object, event: UsageEvent, scale: int) -> None:
    if not isinstance(charge, Charge):
        raise InvalidInputError(
            f"a rule must return Charge objects, not {type(charge).__name__}: {charge!r:.80}; "
            "build them with context.charge(event, amount=...)"
        )
    if charge.event_id != event.event_id:
        raise InvalidInputError(
            f"a rule returned a charge for event {charge.event_id!r} while pricing "
            f"{event.event_id!r}; every charge must carry its own event's id"
        )
    if charge.time != event.time:
        raise InvalidInputError(
            f"a rule returned a charge at {charge.time.isoformat()} for an event at "
            f"{event.time.isoformat()}; a charge carries its event's time"
        )
    raise InvalidInputError(
        f"a rule returned a charge at scale {charge.scale}, but the engine prices at scale "
        f"{scale}; build charges with context.charge(), which rounds to the pricing scale"
    )


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        previous = found.get(entry.name)
        if previous is not None and previous.value != entry.value:
            raise ConfigurationError(
                f"two installed distributions publish the rule {entry.name!r} under "
                f"{ENTRY_POINT_GROUP!r}: {previous.value} and {entry.value}; uninstall one"
            )
        found.setdefault(entry.name, entry)
    return found


def available_rules() -> dict[str, str]:
    """The rules installed distributions publish under ``shardbill.rules``.

    Returns:
        Rule name -> the ``module:attribute`` it loads from, sorted by name.
    """
    return {name: entry.value for name, entry in sorted(_entry_points().items())}


def load_rule(name: str) -> Rule:
    """Load one rule published under the ``shardbill.rules`` entry-point group.

    The entry point must load a :class:`Rule` whose ``name`` is the entry
    point's name.

    Args:
        name: the rule's name.

    Returns:
        The rule.

    Raises:
        ConfigurationError: for an unknown name (listing the known ones), an
            import failure, or an object that is not a rule of that name.
    """
    entries = _entry_points()
    entry = entries.get(name)
    if entry is None:
        known = ", ".join(sorted(entries)) or "none"
        raise ConfigurationError(
            f"unknown rule {name!r}: no installed distribution publishes it under the "
            f"{ENTRY_POINT_GROUP!r} entry points; known rules: {known}"
        )
    try:
        loaded = entry.load()
    except Exception as exc:
        raise ConfigurationError(
            f"rule {name!r} ({entry.value}) failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    checked = _check_rule(loaded, f"entry point {name!r} ({entry.value})")
    if checked.name != name:
        raise ConfigurationError(
            f"entry point {name!r} ({entry.value}) loads a rule named {checked.name!r}; "
            "publish each rule under its own name"
        )
    return checked
