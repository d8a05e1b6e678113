// Package testpki generates throwaway certificate authorities and
// certificates for tests and for the secured local cluster of `tsstore
// bench --secure`: ECDSA P-256 keys, PEM files in a directory the caller
// owns (t.TempDir(), the bench's cluster directory). Nothing it makes is
// ever committed; production certificates are made as
// docs/operations.md#security describes. NewCA and Issue fail the test;
// WriteCA and WriteLeaf return the error, for tools.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a self-signed certificate authority.
type CA struct {
	Name     string
	CertFile string // PEM certificate
	Cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	dir      string
}

// Pair is the files of one issued certificate.
type Pair struct {
	CertFile, KeyFile string
	Cert              *x509.Certificate
}

// Leaf describes a certificate to issue. The zero value is a certificate
// valid from an hour ago for a day, for both server and client use, with
// no names.
type Leaf struct {
	DNSNames []string
	IPs      []net.IP
	// NotBefore and NotAfter default to now-1h and now+24h.
	NotBefore, NotAfter time.Time
	// ServerOnly and ClientOnly restrict the extended key usage.
	ServerOnly, ClientOnly bool
}

// Expired returns l valid only in the past (it expired an hour ago).
func (l Leaf) Expired() Leaf {
	l.NotBefore = time.Now().Add(-48 * time.Hour)
	l.NotAfter = time.Now().Add(-time.Hour)
	return l
}

// Loopback returns l with 127.0.0.1 and localhost as names.
func (l Leaf) Loopback() Leaf {
	l.DNSNames = append(l.DNSNames, "localhost")
	l.IPs = append(l.IPs, net.ParseIP("127.0.0.1"))
	return l
}

// NewCA creates a CA whose certificate is written to dir/<name>-ca.crt.
func NewCA(t testing.TB, dir, name string) *CA {
	t.Helper()
	ca, err := WriteCA(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// Issue signs a certificate for name, written to dir/<name>.crt and
// dir/<name>.key (mode 0600).
func (ca *CA) Issue(t testing.TB, name string, l Leaf) Pair {
	t.Helper()
	p, err := ca.WriteLeaf(name, l)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// WriteCA is NewCA returning its error.
func WriteCA(dir, name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: name + " test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &CA{Name: name, Cert: cert, key: key, dir: dir, CertFile: filepath.Join(dir, name+"-ca.crt")}
	return ca, writePEM(ca.CertFile, "CERTIFICATE", der, 0o644)
}

// WriteLeaf is Issue returning its error.
func (ca *CA) WriteLeaf(name string, l Leaf) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	sn, err := serial()
	if err != nil {
		return Pair{}, err
	}
	if l.NotBefore.IsZero() {
		l.NotBefore = time.Now().Add(-time.Hour)
	}
	if l.NotAfter.IsZero() {
		l.NotAfter = time.Now().Add(24 * time.Hour)
	}
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	switch {
	case l.ServerOnly:
		usage = usage[:1]
	case l.ClientOnly:
		usage = usage[1:]
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    l.NotBefore,
		NotAfter:     l.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
		DNSNames:     l.DNSNames,
		IPAddresses:  l.IPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return Pair{}, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Pair{}, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Pair{}, err
	}
	p := Pair{CertFile: filepath.Join(ca.dir, name+".crt"), KeyFile: filepath.Join(ca.dir, name+".key"), Cert: cert}
	if err := writePEM(p.CertFile, "CERTIFICATE", der, 0o644); err != nil {
		return Pair{}, err
	}
	return p, writePEM(p.KeyFile, "PRIVATE KEY", kder, 0o600)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}
