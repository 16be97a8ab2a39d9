package sshdial

import (
	"slices"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestHostKeyAlgorithmsFollowPins(t *testing.T) {
	const (
		ed    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
		rsa   = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDEb9ymTbtEF1cUrl51ovBiJKvSPDzUdEUCyyl59xmbNh66SWtfIsXjHrHh5IovtavLBDKmsj2v6KuldPbLzS1WCnhQ28bM9BBzWuCt/KhOPuTg09+KaIyZnLqYx9M5ZZTVvtcRJnvlOSdK91OdM2CoYvOasmoqOdq9rnqlBMKtqQ=="
		ecdsa = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg="
	)
	for _, tt := range []struct {
		pins []string
		want []string
	}{
		{nil, nil},
		{[]string{ed}, []string{ssh.KeyAlgoED25519}},
		{[]string{rsa}, []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}},
		{[]string{rsa, ed}, []string{ssh.KeyAlgoED25519, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}},
		{[]string{ecdsa, rsa, ed, ed}, []string{ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}},
	} {
		c, err := newHostKeyCheck("h", "127.0.0.1:22", tt.pins, nil, false, "")
		if err != nil {
			t.Fatal(err)
		}
		if got := c.algorithms(); !slices.Equal(got, tt.want) {
			t.Errorf("pins %d: algorithms = %v, want %v", len(tt.pins), got, tt.want)
		}
	}
	if _, err := newHostKeyCheck("h", "127.0.0.1:22", []string{"ssh-ed25519 not-base64"}, nil, false, ""); err == nil {
		t.Error("malformed pin accepted")
	}
}
