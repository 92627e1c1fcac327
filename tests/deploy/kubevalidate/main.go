// kubevalidate: decodes deploy/ manifests strictly (unknown fields are errors) with Kubernetes' own
// schemes and runs Kubernetes' own validation on them, as the API server / kubelet would:
// Pods (ValidatePodCreate), DaemonSets (ValidateDaemonSet) and kube-apiserver EncryptionConfigurations
// (ValidateEncryptionConfiguration, which checks the KMS v2 provider: name, unix endpoint, timeout).
//
// Usage: kubevalidate FILE... ; every YAML document of every file must be one of those kinds.
// Exit 0 when all are valid, 1 otherwise. Run by tests/deploy/kubevalidate.sh (ctest deploy_kube_validation).
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	apiserverapi "k8s.io/apiserver/pkg/apis/apiserver"
	apiserverinstall "k8s.io/apiserver/pkg/apis/apiserver/install"
	apiservervalidation "k8s.io/apiserver/pkg/apis/apiserver/validation"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	"k8s.io/kubernetes/pkg/apis/apps"
	_ "k8s.io/kubernetes/pkg/apis/apps/install"
	appsvalidation "k8s.io/kubernetes/pkg/apis/apps/validation"
	"k8s.io/kubernetes/pkg/apis/core"
	_ "k8s.io/kubernetes/pkg/apis/core/install"
	corevalidation "k8s.io/kubernetes/pkg/apis/core/validation"
)

func main() {
	kube := serializer.NewCodecFactory(legacyscheme.Scheme, serializer.EnableStrict).UniversalDecoder()
	encScheme := runtime.NewScheme()
	apiserverinstall.Install(encScheme)
	enc := serializer.NewCodecFactory(encScheme, serializer.EnableStrict).UniversalDecoder()

	failed, checked := 0, 0
	for _, path := range os.Args[1:] {
		data, err := os.ReadFile(path)
		if err != nil {
			fmt.Printf("FAIL %s: %v\n", path, err)
			failed++
			continue
		}
		reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for doc := 1; ; doc++ {
			raw, err := reader.Read()
			if err == io.EOF {
				break
			}
			if err != nil {
				fmt.Printf("FAIL %s#%d: %v\n", path, doc, err)
				failed++
				break
			}
			if len(bytes.TrimSpace(stripComments(raw))) == 0 {
				continue
			}
			checked++
			decoder := kube
			if bytes.Contains(raw, []byte("kind: EncryptionConfiguration")) {
				decoder = enc
			}
			obj, _, err := decoder.Decode(raw, nil, nil)
			if err != nil {
				fmt.Printf("FAIL %s#%d: %v\n", path, doc, err)
				failed++
				continue
			}
			var problems []string
			switch o := obj.(type) {
			case *core.Pod:
				for _, e := range corevalidation.ValidatePodCreate(o, corevalidation.PodValidationOptions{}) {
					problems = append(problems, e.Error())
				}
			case *apps.DaemonSet:
				for _, e := range appsvalidation.ValidateDaemonSet(o, corevalidation.PodValidationOptions{}) {
					problems = append(problems, e.Error())
				}
			case *apiserverapi.EncryptionConfiguration:
				for _, e := range apiservervalidation.ValidateEncryptionConfiguration(o, false) {
					problems = append(problems, e.Error())
				}
			default:
				problems = append(problems, fmt.Sprintf("no validation for %T", obj))
			}
			if len(problems) > 0 {
				fmt.Printf("FAIL %s#%d: %v\n", path, doc, problems)
				failed++
			} else {
				fmt.Printf("ok   %s#%d: %T\n", path, doc, obj)
			}
		}
	}
	fmt.Printf("kubevalidate: %d passed, %d failed\n", checked-failed, failed)
	if failed > 0 || checked == 0 {
		os.Exit(1)
	}
}

// stripComments drops YAML comment lines, to recognise documents that hold nothing else.
func stripComments(doc []byte) []byte {
	var out bytes.Buffer
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out.Write(line)
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}
