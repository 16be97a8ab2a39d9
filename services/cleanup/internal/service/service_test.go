package service

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/staging"
)

func TestRemoveStagingNeedsAJob(t *testing.T) {
	st, err := staging.NewDir(filepath.Join(t.TempDir(), "staging"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Outside a runner there is no job id in ctx: the command can never succeed.
	_, err = New(st, Options{}).RemoveStaging(context.Background(), contracts.RemoveStagingArgs{})
	var se *contracts.StepError
	if !errors.As(err, &se) || se.Code != contracts.CodeInvalidCommand || se.Retryable {
		t.Errorf("RemoveStaging without a job = %v, want permanent invalid_command", err)
	}
}
