"""The study's figures: loss curves of the variants on one PNG, needle heatmaps on another."""

from __future__ import annotations

import numpy as np

from report import fmt_len


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _smooth(y, k: int):
    y = np.asarray(y, dtype=float)
    if len(y) < 3 or k <= 1:
        return y
    k = min(k, len(y))
    kernel = np.ones(k) / k
    padded = np.concatenate([np.full(k - 1, y[0]), y])
    return np.convolve(padded, kernel, mode="valid")


def loss_curves(results: dict, path: str) -> None:
    """Training loss, passkey-digit loss and validation loss against tokens, and the final
    validation loss per position bucket, one line per variant."""
    plt = _pyplot()
    runs = {k: r for k, r in results.get("runs", {}).items() if r.get("train") or r.get("eval")}
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for kind, run in runs.items():
        t = run.get("train") or {}
        label = kind
        if t.get("tokens"):
            tokens = np.asarray(t["tokens"]) / 1e6
            line, = axes[0].plot(tokens, _smooth(t["loss"], 5), label=f"{label} (train)")
            if t.get("val"):
                val = np.asarray(t["val"], dtype=float)
                axes[0].plot(val[:, 1] / 1e6, val[:, 2], "o--", color=line.get_color(),
                             markersize=3, label=f"{kind} (validation)")
            axes[1].plot(tokens, _smooth(t["answer_loss"], 5), color=line.get_color(),
                         label=label)
        val = (run.get("eval") or {}).get("val")
        if val:
            mids = [(lo + hi) / 2 for lo, hi, _ in val["buckets"]]
            axes[2].plot(mids, [v for _, _, v in val["buckets"]], "o-", label=kind)
    axes[0].set(xlabel="training tokens (M)", ylabel="loss (nats/token)",
                title="language-model loss")
    axes[1].set(xlabel="training tokens (M)", ylabel="loss (nats/digit)",
                title="passkey answer digits (ln 10 = guessing)")
    axes[1].axhline(np.log(10), color="gray", lw=0.8, ls=":")
    axes[2].set(xlabel="token position", ylabel="validation loss", xscale="log",
                title="final validation loss by position")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    meta = results.get("meta", {})
    fig.suptitle(f"{meta.get('device', '')}, {meta.get('date', '')}, commit "
                 f"{meta.get('commit', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def needle_heatmaps(results: dict, path: str) -> None:
    """Retrieval accuracy over (context length x needle depth), one panel per variant."""
    plt = _pyplot()
    runs = [(k, r) for k, r in results.get("runs", {}).items()
            if (r.get("eval") or {}).get("needle")]
    if not runs:
        return
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs) + 1, 4.6), squeeze=False)
    image = None
    for ax, (kind, run) in zip(axes[0], runs):
        needle = run["eval"]["needle"]
        acc = np.asarray(needle["accuracy"], dtype=float)
        image = ax.imshow(acc, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto", origin="upper")
        ax.set_xticks(range(len(needle["lengths"])), [fmt_len(n) for n in needle["lengths"]])
        ax.set_yticks(range(len(needle["depths"])), [f"{d:.1f}" for d in needle["depths"]])
        for (i, j), x in np.ndenumerate(acc):
            ax.text(j, i, "-" if np.isnan(x) else f"{100 * x:.0f}", ha="center", va="center",
                    fontsize=7)
        ax.set(xlabel="context length", ylabel="needle depth" if ax is axes[0][0] else "",
               title=run.get("describe", kind))
        ax.title.set_fontsize(8)
    fig.colorbar(image, ax=axes[0].tolist(), label="accuracy")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
