package wrenn_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/wrenn-dev/wrenn/sdk/go/wrenn"
)

// A sandbox from WRENN_URL and WRENN_API_KEY: run a command, copy a file
// in and out, destroy it.
func Example() {
	ctx := context.Background()
	c, err := wrenn.New(wrenn.Config{}) // WRENN_URL, WRENN_API_KEY
	if err != nil {
		log.Fatal(err)
	}
	sb, err := c.CreateSandbox(ctx, wrenn.CreateOptions{Template: "minimal"})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Destroy(ctx)

	res, err := sb.Exec(ctx, "uname", wrenn.ExecOptions{Args: []string{"-a"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(res.Stdout)

	if _, err := sb.Files().Write(ctx, "/tmp/hello.txt", strings.NewReader("hello\n")); err != nil {
		log.Fatal(err)
	}
}

// Output streamed as it comes, and the command's exit code.
func ExampleSandbox_ExecStream() {
	ctx := context.Background()
	c, err := wrenn.New(wrenn.Config{})
	if err != nil {
		log.Fatal(err)
	}
	st, err := c.Sandbox("sb-abc123").ExecStream(ctx, "sh", wrenn.ExecOptions{
		Args:   []string{"-c", "for i in 1 2 3; do echo $i; sleep 1; done; exit 3"},
		Stdout: os.Stdout, Stderr: os.Stderr,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit code", st.ExitCode)
}

// An interactive terminal: keystrokes in, output out, a resize.
func ExampleSandbox_Shell() {
	ctx := context.Background()
	c, err := wrenn.New(wrenn.Config{})
	if err != nil {
		log.Fatal(err)
	}
	term, err := c.Sandbox("sb-abc123").Shell(ctx, wrenn.PtyOptions{Cols: 120, Rows: 40})
	if err != nil {
		log.Fatal(err)
	}
	defer term.Close()
	go func() { _, _ = term.Write([]byte("echo hi; exit 3\n")) }()
	_ = term.Resize(ctx, 100, 30)
	go func() { _, _ = os.Stdout.ReadFrom(term) }()
	st, err := term.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("shell exited with", st.ExitCode)
}

// A file streamed out of a sandbox into a local file.
func ExampleFiles_Read() {
	ctx := context.Background()
	c, err := wrenn.New(wrenn.Config{})
	if err != nil {
		log.Fatal(err)
	}
	rc, err := c.Sandbox("sb-abc123").Files().Read(ctx, "/home/user/report.csv")
	if err != nil {
		log.Fatal(err)
	}
	defer rc.Close()
	out, err := os.Create("report.csv")
	if err != nil {
		log.Fatal(err)
	}
	defer out.Close()
	if _, err := out.ReadFrom(rc); err != nil {
		log.Fatal(err)
	}
}

// Errors carry the API's status and code.
func ExampleAPIError() {
	ctx := context.Background()
	c, err := wrenn.New(wrenn.Config{})
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.GetSandbox(ctx, "sb-missing")
	if wrenn.IsNotFound(err) {
		fmt.Println("no such sandbox")
	}
}
