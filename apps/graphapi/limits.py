"""Limits on what one GraphQL document may ask for: estimated cost and list sizes.

Strawberry ships the depth, alias and token limits (``schema.build_schema`` adds them);
it has no cost limit, so ``CostLimiter`` estimates one before anything runs: each field
costs 1, and a field's sub-selection is multiplied by how many objects it returns: ``n``
for ``recommendations``/``similar``/``checkout`` (their defaults when not given), the
length of a list argument (``ids``, ``transactions``, ...). So ``users(ids: [100 ids])
{ recommendations(n: 50) { items { item { similar(n: 50) { items { itemId } } } } } }``
costs about 100 x 50 x 50 and is refused, while the same shape for one user passes.

The same pass refuses a list argument longer than ``graphql_max_batch`` (one request
scoring 10,000 transactions is a batch job, not an API call). Both refusals are GraphQL
errors before execution (``extensions.code`` ``QUERY_TOO_COSTLY`` / ``BATCH_TOO_LARGE``):
HTTP 200 with ``errors`` and no data, nothing sent upstream.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValueNode,
    VariableNode,
)
from strawberry.extensions import SchemaExtension

__all__ = ["BATCH_ARGUMENTS", "CostLimiter", "estimate"]

# Arguments whose list length multiplies the work and counts against the batch limit.
BATCH_ARGUMENTS = ("ids", "transactions", "events", "labels", "cart")
# Fields returning up to ``n`` objects, with the schema's default n.
SIZED_FIELDS = {"recommendations": 10, "similar": 10, "checkout": 5}
MAX_FRAGMENT_NESTING = 20  # fragments are not validated yet: a cycle must not loop forever


class CostLimiter(SchemaExtension):
    """Refuse documents costlier than ``max_cost`` or with lists over ``max_batch``."""

    def __init__(self, *, max_cost: int, max_batch: int) -> None:
        self.max_cost = max_cost
        self.max_batch = max_batch

    def on_validate(self) -> Iterator[None]:
        # Before the validation rules run: an error set here skips them and execution.
        ctx = self.execution_context
        document = ctx.graphql_document
        if document is not None and not ctx.pre_execution_errors:
            error = self.check(document.definitions, ctx.operation_name, ctx.variables or {})
            if error is not None:
                ctx.pre_execution_errors = [error]
        yield

    def check(self, definitions: Any, operation_name: str | None,
              variables: Mapping[str, Any]) -> GraphQLError | None:
        fragments = {d.name.value: d for d in definitions
                     if isinstance(d, FragmentDefinitionNode)}
        operations = [d for d in definitions if isinstance(d, OperationDefinitionNode)
                      and (operation_name is None or (d.name and d.name.value == operation_name))]
        if len(operations) != 1:
            return None  # graphql-core's own validation reports the ambiguity
        walk = _Walk(fragments, variables, self.max_batch)
        cost = walk.cost(operations[0].selection_set, 0)
        if walk.too_long is not None:
            name, size = walk.too_long
            return GraphQLError(
                f"{name} holds {size} items; at most {self.max_batch} per request",
                extensions={"code": "BATCH_TOO_LARGE", "argument": name, "size": size,
                            "limit": self.max_batch})
        if cost > self.max_cost:
            return GraphQLError(
                f"query cost {cost} exceeds the limit of {self.max_cost} (each field costs 1, "
                f"times the n or list size of the fields above it): ask for fewer objects",
                extensions={"code": "QUERY_TOO_COSTLY", "cost": cost, "limit": self.max_cost})
        return None


def estimate(document: Any, variables: Mapping[str, Any] | None = None,
             operation_name: str | None = None) -> int:
    """The estimated cost of a parsed document (for tests and for clients' tooling)."""
    fragments = {d.name.value: d for d in document.definitions
                 if isinstance(d, FragmentDefinitionNode)}
    [operation] = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)
                   and (operation_name is None or (d.name and d.name.value == operation_name))]
    return _Walk(fragments, variables or {}, 10**9).cost(operation.selection_set, 0)


class _Walk:
    def __init__(self, fragments: Mapping[str, FragmentDefinitionNode],
                 variables: Mapping[str, Any], max_batch: int) -> None:
        self.fragments = fragments
        self.variables = variables
        self.max_batch = max_batch
        self.too_long: tuple[str, int] | None = None

    def cost(self, selection_set: SelectionSetNode | None, nesting: int) -> int:
        if selection_set is None or nesting > MAX_FRAGMENT_NESTING:
            return 0
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total += 1 + self.size(selection) * self.cost(selection.selection_set, nesting)
            elif isinstance(selection, InlineFragmentNode):
                total += self.cost(selection.selection_set, nesting + 1)
            elif isinstance(selection, FragmentSpreadNode):
                fragment = self.fragments.get(selection.name.value)
                if fragment is not None:
                    total += self.cost(fragment.selection_set, nesting + 1)
        return total

    def size(self, field: FieldNode) -> int:
        """How many objects ``field`` returns (its sub-selection runs that many times)."""
        args = {a.name.value: a.value for a in field.arguments or ()}
        size = 1
        for name in BATCH_ARGUMENTS:
            if name in args:
                length = self._length(args[name])
                if length > self.max_batch and self.too_long is None:
                    self.too_long = (name, length)
                size = max(size, length)
        default = SIZED_FIELDS.get(field.name.value)
        if default is not None:
            n = self._int(args["n"]) if "n" in args else default
            size = max(size, n)
        return max(size, 1)

    def _value(self, node: ValueNode) -> Any:
        if isinstance(node, VariableNode):
            return self.variables.get(node.name.value)
        return node

    def _length(self, node: ValueNode) -> int:
        value = self._value(node)
        if isinstance(value, ListValueNode):
            return len(value.values)
        return len(value) if isinstance(value, list) else 1

    def _int(self, node: ValueNode) -> int:
        value = self._value(node)
        if isinstance(value, IntValueNode):
            value = value.value
        try:
            return max(0, int(value))
        except (TypeError, ValueError):
            return 1  # not an Int: validation reports it
