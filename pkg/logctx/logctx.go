// Package logctx carries a *slog.Logger in a context, so every line a step writes has
// the job id, step and host attached once, where the step starts.
package logctx

import (
	"context"
	"log/slog"
)

type key struct{}

// With returns ctx carrying log.
func With(ctx context.Context, log *slog.Logger) context.Context {
	return context.WithValue(ctx, key{}, log)
}

// From returns the logger in ctx, or a logger that discards.
func From(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(key{}).(*slog.Logger); ok {
		return l
	}
	return slog.New(slog.DiscardHandler)
}

// Add returns ctx whose logger has args attached.
func Add(ctx context.Context, args ...any) context.Context {
	return With(ctx, From(ctx).With(args...))
}
