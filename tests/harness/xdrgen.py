"""hypothesis strategies for libvirt's XDR values: strings and typed-param lists of every
type, shared by the XDR and the procedure codec property tests."""

from __future__ import annotations

from hypothesis import strategies as st

from hookd.rpc.xdr import ParamType, TypedParam

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
params = st.lists(st.one_of(
    st.builds(TypedParam, text, st.just(ParamType.INT), st.integers(-(2**31), 2**31 - 1)),
    st.builds(TypedParam, text, st.just(ParamType.UINT), st.integers(0, 2**32 - 1)),
    st.builds(TypedParam, text, st.just(ParamType.LLONG), st.integers(-(2**63), 2**63 - 1)),
    st.builds(TypedParam, text, st.just(ParamType.ULLONG), st.integers(0, 2**64 - 1)),
    st.builds(TypedParam, text, st.just(ParamType.DOUBLE), st.floats(allow_nan=False)),
    st.builds(TypedParam, text, st.just(ParamType.BOOLEAN), st.integers(-(2**31), 2**31 - 1)),
    st.builds(TypedParam, text, st.just(ParamType.STRING), text),
), max_size=8)
