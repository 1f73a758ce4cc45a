// Command probe is the workload of the real-node tests: it logs, serves HTTP, and checks that the
// pod reaches the apiserver through the `kubernetes` Service, all from one static binary.
//
//	probe serve ADDR   log a line, then answer GET / with the pod's name, GET /apiserver
//	                   with the status of the apiserver's /version (ServiceAccount credentials)
//	                   and GET /resolve?name=N with N's addresses (the cluster DNS)
//	probe echo WORDS   print WORDS (what `kubectl exec` runs)
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe serve ADDR | probe echo WORDS")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "echo":
		fmt.Println(strings.Join(os.Args[2:], " "))
	case "serve":
		addr := ":8080"
		if len(os.Args) > 2 {
			addr = os.Args[2]
		}
		serve(addr)
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

func serve(addr string) {
	name, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "probe %s\n", name)
	})
	http.HandleFunc("/apiserver", func(w http.ResponseWriter, r *http.Request) {
		status, body, err := apiserverVersion()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintf(w, "%d %s", status, body)
	})
	http.HandleFunc("/resolve", func(w http.ResponseWriter, r *http.Request) {
		addresses, err := net.LookupHost(r.URL.Query().Get("name"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		fmt.Fprint(w, strings.Join(addresses, " "))
	})
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("probe %s listening on %s\n", name, listener.Addr())
	if err := http.Serve(listener, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// apiserverVersion calls the apiserver the way in-cluster clients do: the Service address from
// the environment, the cluster CA and the token the kubelet mounts.
func apiserverVersion() (int, string, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	ca, err := os.ReadFile(serviceAccount + "/ca.crt")
	if err != nil {
		return 0, "", err
	}
	token, err := os.ReadFile(serviceAccount + "/token")
	if err != nil {
		return 0, "", err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	request, err := http.NewRequest("GET", "https://"+net.JoinHostPort(host, port)+"/version", nil)
	if err != nil {
		return 0, "", err
	}
	request.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	response, err := client.Do(request)
	if err != nil {
		return 0, "", err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	return response.StatusCode, string(body), err
}
