package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/term"
)

// console serialises what ferry writes for people. On a terminal it keeps a few live
// lines (progress) at the bottom: every line printed, and every write of another
// writer wrapped by Writer (the logs of `ferry dev`), first erases them and then
// draws them again below, so live lines never tear up the output. Elsewhere it just
// writes lines.
type console struct {
	mu    sync.Mutex
	out   io.Writer
	tty   bool
	width func() int
	live  func(width int) []string // called with mu held; nil: no live lines
	drawn int                      // live lines on screen
	tick  *time.Ticker
	stop  chan struct{}
}

// consoleRefresh is how often live lines are redrawn without news (elapsed times).
const consoleRefresh = 250 * time.Millisecond

// newConsole writes to out; tty enables live lines.
func newConsole(out io.Writer, tty bool) *console {
	c := &console{out: out, tty: tty, width: func() int { return 100 }}
	if f, ok := out.(*os.File); ok && tty {
		c.width = func() int {
			if w, _, err := term.GetSize(int(f.Fd())); err == nil && w > 10 {
				return w
			}
			return 100
		}
	}
	return c
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// Println prints a line above the live lines.
func (c *console) Println(line string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clear()
	fmt.Fprintln(c.out, line)
	c.draw()
}

// PrintFunc prints the line f returns; f runs with the console locked, so it may
// change what the live lines show.
func (c *console) PrintFunc(f func() string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	line := f()
	c.clear()
	fmt.Fprintln(c.out, line)
	c.draw()
}

// Update runs f (which changes what the live lines show) and redraws them.
func (c *console) Update(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f()
	if c.tty {
		c.clear()
		c.draw()
	}
}

// SetLive installs the function that renders the live lines (nil removes them) and
// redraws them now and every consoleRefresh. Without a terminal it does nothing.
func (c *console) SetLive(live func(width int) []string) {
	if !c.tty {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clear()
	c.live = live
	c.draw()
	if live != nil && c.tick == nil {
		c.tick = time.NewTicker(consoleRefresh)
		c.stop = make(chan struct{})
		go c.refresh(c.tick, c.stop)
	}
	if live == nil && c.tick != nil {
		c.tick.Stop()
		close(c.stop)
		c.tick, c.stop = nil, nil
	}
}

func (c *console) refresh(t *time.Ticker, stop chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			c.mu.Lock()
			if c.live != nil {
				c.clear()
				c.draw()
			}
			c.mu.Unlock()
		}
	}
}

// Writer returns a writer to w whose writes appear above the live lines.
func (c *console) Writer(w io.Writer) io.Writer { return consoleWriter{c, w} }

type consoleWriter struct {
	c *console
	w io.Writer
}

func (cw consoleWriter) Write(p []byte) (int, error) {
	cw.c.mu.Lock()
	defer cw.c.mu.Unlock()
	cw.c.clear()
	n, err := cw.w.Write(p)
	cw.c.draw()
	return n, err
}

// clear erases the live lines: the cursor goes up to the first of them and the
// screen is cleared from there down.
func (c *console) clear() {
	if c.drawn > 0 {
		fmt.Fprintf(c.out, "\r\x1b[%dA\x1b[J", c.drawn)
		c.drawn = 0
	}
}

func (c *console) draw() {
	if c.live == nil || !c.tty {
		return
	}
	width := c.width()
	var b strings.Builder
	lines := c.live(width)
	for _, l := range lines {
		b.WriteString(truncate(l, width-1))
		b.WriteByte('\n')
	}
	io.WriteString(c.out, b.String())
	c.drawn = len(lines)
}

// truncate shortens s to at most n runes, so that no live line wraps.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	if n < 1 {
		return ""
	}
	return string(r[:n-1]) + "…"
}
