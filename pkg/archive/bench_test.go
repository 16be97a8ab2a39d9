package archive

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkArchive archives 256 MiB of log-like data (zstd takes it to about a fifth)
// to io.Discard: reading, hashing, tar and compression, no disk writes. MB/s are of
// input; ratio is compressed/input.
func BenchmarkArchive(b *testing.B) {
	const size = 256 << 20
	src := b.TempDir()
	f, err := os.Create(filepath.Join(src, "app.log"))
	must(b, err)
	must(b, logData(f, size, 42))
	must(b, f.Close())
	root := openRoot(b, src)
	for _, comp := range []string{Zstd, Gzip} {
		b.Run(comp, func(b *testing.B) {
			b.SetBytes(size)
			var m struct{ size int64 }
			for b.Loop() {
				man, err := Write(context.Background(), root, io.Discard, Options{Compression: comp})
				must(b, err)
				m.size = man.Artifact.Size
			}
			b.ReportMetric(float64(m.size)/size, "ratio")
		})
	}
}
