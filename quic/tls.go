package quic

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// LoadKeyPair loads a PEM certificate chain and its private key.
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load key pair %s, %s: %w", certFile, keyFile, err)
	}
	return cert, nil
}

// ServerTLSConfig serves cert, offering the ALPN protocols alpn, with TLS 1.3 minimum.
func ServerTLSConfig(cert tls.Certificate, alpn ...string) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   slices.Clone(alpn),
		MinVersion:   tls.VersionTLS13,
	}
}

// ClientTLSConfig trusts the PEM certificates in caFile, or the system roots if caFile is "".
// serverName may be "": Dialer.Dial then uses the host part of the address it dials.
func ClientTLSConfig(caFile, serverName string, alpn ...string) (*tls.Config, error) {
	conf := &tls.Config{
		ServerName: serverName,
		NextProtos: slices.Clone(alpn),
		MinVersion: tls.VersionTLS13,
	}
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("client tls: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("client tls: no PEM certificate in %s", caFile)
		}
		conf.RootCAs = pool
	}
	return conf, nil
}

// File names of DevCertificate in its data directory.
const (
	DevCAFile        = "ca.pem"
	DevCAKeyFile     = "ca-key.pem"
	DevServerFile    = "server.pem"
	DevServerKeyFile = "server-key.pem"
)

const (
	devCAValidity       = 10 * 365 * 24 * time.Hour
	devServerValidity   = 365 * 24 * time.Hour
	devServerRenewAhead = 30 * 24 * time.Hour
)

// DevCertificate returns a server certificate issued by a development CA kept in dataDir,
// for running without a real PKI. Both are created once and reused on restart:
//   - ca.pem and ca-key.pem (0600): an ECDSA P-256 CA valid 10 years, created when ca.pem is
//     missing. Clients trust it with ClientTLSConfig(caFile, ...).
//   - server.pem and server-key.pem (0600): an ECDSA P-256 server certificate valid 1 year,
//     re-issued from the same CA when it is missing, unreadable, not issued by this CA,
//     expiring within 30 days, or missing a requested SAN.
//
// The requested SANs are "localhost", 127.0.0.1, ::1, os.Hostname(), and hosts (IPs become IP
// SANs, other names DNS SANs); a re-issued certificate keeps the SANs of the one it replaces.
// It returns the server certificate with its chain (server, CA) and the path of ca.pem.
// Files are written atomically; concurrent first use by several processes is not supported.
func DevCertificate(dataDir string, hosts []string) (cert tls.Certificate, caFile string, err error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return tls.Certificate{}, "", fmt.Errorf("dev certificate: %w", err)
	}
	caFile = filepath.Join(dataDir, DevCAFile)
	ca, caKey, err := loadOrCreateDevCA(dataDir)
	if err != nil {
		return tls.Certificate{}, "", fmt.Errorf("dev certificate: %w", err)
	}
	dnsNames, ips := devSANs(hosts)
	certPath, keyPath := filepath.Join(dataDir, DevServerFile), filepath.Join(dataDir, DevServerKeyFile)
	// A missing, unreadable or mismatched server pair is re-issued; only the CA must persist.
	if cert, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		leaf := cert.Leaf
		if leaf != nil && devServerUsable(leaf, ca, dnsNames, ips) {
			cert.Certificate = append(cert.Certificate[:1], ca.Raw)
			return cert, caFile, nil
		}
		if leaf != nil && leaf.CheckSignatureFrom(ca) == nil {
			dnsNames, ips = mergeSANs(dnsNames, ips, leaf.DNSNames, leaf.IPAddresses)
		}
	}
	cert, err = issueDevServer(dataDir, ca, caKey, dnsNames, ips)
	if err != nil {
		return tls.Certificate{}, "", fmt.Errorf("dev certificate: %w", err)
	}
	return cert, caFile, nil
}

func loadOrCreateDevCA(dataDir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPath, keyPath := filepath.Join(dataDir, DevCAFile), filepath.Join(dataDir, DevCAKeyFile)
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err == nil {
		key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
		if !ok || pair.Leaf == nil || !pair.Leaf.IsCA {
			return nil, nil, fmt.Errorf("%s is not an ECDSA CA", certPath)
		}
		return pair.Leaf, key, nil
	}
	if _, serr := os.Stat(certPath); !errors.Is(serr, fs.ErrNotExist) {
		// ca.pem exists (clients may trust it) but can't be used: never replace it silently.
		return nil, nil, fmt.Errorf("load CA (remove %s to create a new one): %w", certPath, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "qkas development CA", Organization: []string{"qkas"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(devCAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	// Key first: ca.pem is what marks the CA as created.
	if err := writeKey(keyPath, key); err != nil {
		return nil, nil, err
	}
	if err := writeFileAtomic(certPath, pemCert(der), 0o644, true); err != nil {
		return nil, nil, err
	}
	return ca, key, nil
}

func issueDevServer(dataDir string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, dnsNames []string, ips []net.IP) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	notAfter := now.Add(devServerValidity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: dnsNames[0], Organization: []string{"qkas"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     dnsNames,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	// Key first, then the certificate: a crash in between leaves a mismatched pair, which the
	// next call re-issues.
	if err := writeKey(filepath.Join(dataDir, DevServerKeyFile), key); err != nil {
		return tls.Certificate{}, err
	}
	if err := writeFileAtomic(filepath.Join(dataDir, DevServerFile), pemCert(der), 0o644, true); err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// devServerUsable: issued by ca, valid for more than devServerRenewAhead, has every SAN.
func devServerUsable(leaf, ca *x509.Certificate, dnsNames []string, ips []net.IP) bool {
	if leaf.CheckSignatureFrom(ca) != nil || !bytes.Equal(leaf.RawIssuer, ca.RawSubject) {
		return false
	}
	if time.Until(leaf.NotAfter) < devServerRenewAhead {
		return false
	}
	for _, n := range dnsNames {
		if !slices.Contains(leaf.DNSNames, n) {
			return false
		}
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(leaf.IPAddresses, ip.Equal) {
			return false
		}
	}
	return true
}

// devSANs: "localhost" first (the subject CN), then the hostname and hosts; IPs apart.
func devSANs(hosts []string) ([]string, []net.IP) {
	names := []string{"localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1).To4(), net.IPv6loopback}
	if h, err := os.Hostname(); err == nil && h != "" {
		hosts = append([]string{h}, hosts...)
	}
	return mergeSANs(names, ips, hosts, nil)
}

func mergeSANs(names []string, ips []net.IP, moreHosts []string, moreIPs []net.IP) ([]string, []net.IP) {
	for _, h := range moreHosts {
		if ip := net.ParseIP(h); ip != nil {
			moreIPs = append(moreIPs, ip)
		} else if h != "" && !slices.Contains(names, h) {
			names = append(names, h)
		}
	}
	for _, ip := range moreIPs {
		if ip4 := ip.To4(); ip4 != nil {
			ip = ip4
		}
		if !slices.ContainsFunc(ips, ip.Equal) {
			ips = append(ips, ip)
		}
	}
	return names, ips
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600, true)
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return n
}
