// libcni-client drives CNI plugins through libcni, the Go library container runtimes use, the
// way a runtime does: load a conflist, then AddNetworkList / CheckNetworkList / DelNetworkList /
// GetVersionInfo, and GCNetworkList when the library offers it. Results are cached by libcni in
// -cache-dir between invocations, so CHECK and DEL get the ADD result as prevResult exactly as in
// a real runtime. Every command prints one JSON object on stdout:
//
//	{"ok": true, "result": ...}  or  {"ok": false, "error": "...", "code": N, "details": "..."}
//
// and exits 0 on success, 1 on a CNI/library error, 2 on usage errors, 3 when the library lacks
// the operation (GC before libcni 1.2).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"reflect"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

type reply struct {
	OK      bool        `json:"ok"`
	Result  interface{} `json:"result,omitempty"`
	Error   string      `json:"error,omitempty"`
	Code    uint        `json:"code,omitempty"`
	Details string      `json:"details,omitempty"`
}

func emit(r reply, status int) {
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
	os.Exit(status)
}

func fail(err error) {
	r := reply{OK: false, Error: err.Error()}
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		r.Code, r.Error, r.Details = cniErr.Code, cniErr.Msg, cniErr.Details
	}
	emit(r, 1)
}

func main() {
	if len(os.Args) < 2 {
		emit(reply{Error: "usage: libcni-client add|check|del|version|gc [flags]"}, 2)
	}
	command := os.Args[1]
	flags := flag.NewFlagSet(command, flag.ContinueOnError)
	conflistPath := flags.String("conflist", "", "network configuration list file")
	netns := flags.String("netns", "", "network namespace path (may be empty for del)")
	containerID := flags.String("id", "", "container id")
	ifName := flags.String("ifname", "eth0", "interface name in the container")
	cniPath := flags.String("cni-path", "", "plugin directories, ':'-separated")
	cacheDir := flags.String("cache-dir", "", "libcni result cache directory")
	cniArgs := flags.String("args", "", "CNI_ARGS as K=V;K=V")
	capabilities := flags.String("cap", "", "capability args as a JSON object")
	pluginType := flags.String("plugin", "", "plugin type for version")
	valid := flags.String("valid", "[]", `gc: valid attachments, JSON [{"containerID":..,"ifname":..}]`)
	if err := flags.Parse(os.Args[2:]); err != nil {
		emit(reply{Error: err.Error()}, 2)
	}

	cni := libcni.NewCNIConfigWithCacheDir(strings.Split(*cniPath, ":"), *cacheDir, nil)
	ctx := context.Background()

	if command == "version" {
		info, err := cni.GetVersionInfo(ctx, *pluginType)
		if err != nil {
			fail(err)
		}
		emit(reply{OK: true, Result: map[string]interface{}{"supportedVersions": info.SupportedVersions()}}, 0)
	}

	list, err := libcni.ConfListFromFile(*conflistPath)
	if err != nil {
		fail(err)
	}
	runtime := &libcni.RuntimeConf{ContainerID: *containerID, NetNS: *netns, IfName: *ifName}
	if *cniArgs != "" {
		for _, pair := range strings.Split(*cniArgs, ";") {
			kv := strings.SplitN(pair, "=", 2)
			if len(kv) != 2 {
				emit(reply{Error: "bad -args pair " + pair}, 2)
			}
			runtime.Args = append(runtime.Args, [2]string{kv[0], kv[1]})
		}
	}
	if *capabilities != "" {
		if err := json.Unmarshal([]byte(*capabilities), &runtime.CapabilityArgs); err != nil {
			emit(reply{Error: "bad -cap: " + err.Error()}, 2)
		}
	}

	switch command {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, runtime)
		if err != nil {
			fail(err)
		}
		// Print the result exactly as the plugin chain returned it (in the conflist's version).
		printed, err := json.Marshal(result)
		if err != nil {
			fail(err)
		}
		emit(reply{OK: true, Result: json.RawMessage(printed)}, 0)
	case "check":
		if err := cni.CheckNetworkList(ctx, list, runtime); err != nil {
			fail(err)
		}
		emit(reply{OK: true}, 0)
	case "del":
		if err := cni.DelNetworkList(ctx, list, runtime); err != nil {
			fail(err)
		}
		emit(reply{OK: true}, 0)
	case "gc":
		gc(ctx, cni, list, *valid)
	default:
		emit(reply{Error: "unknown command " + command}, 2)
	}
}

// gc calls CNIConfig.GCNetworkList (libcni >= 1.2) through reflection: this client must also build
// against older libraries (Debian 12 ships 1.1.2), where the method and its argument types are absent.
func gc(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, validJSON string) {
	method := reflect.ValueOf(cni).MethodByName("GCNetworkList")
	if !method.IsValid() {
		emit(reply{Error: "this libcni has no GCNetworkList (added in libcni 1.2.0)"}, 3)
	}
	var attachments []struct {
		ContainerID string `json:"containerID"`
		IfName      string `json:"ifname"`
	}
	if err := json.Unmarshal([]byte(validJSON), &attachments); err != nil {
		emit(reply{Error: "bad -valid: " + err.Error()}, 2)
	}
	argsType := method.Type().In(2)
	argsPointer := argsType.Kind() == reflect.Ptr
	if argsPointer {
		argsType = argsType.Elem()
	}
	args := reflect.New(argsType).Elem()
	field := args.FieldByName("ValidAttachments")
	entries := reflect.MakeSlice(field.Type(), 0, len(attachments))
	for _, a := range attachments {
		entry := reflect.New(field.Type().Elem()).Elem()
		entry.FieldByName("ContainerID").SetString(a.ContainerID)
		entry.FieldByName("IfName").SetString(a.IfName)
		entries = reflect.Append(entries, entry)
	}
	field.Set(entries)
	argument := args
	if argsPointer {
		argument = args.Addr()
	}
	out := method.Call([]reflect.Value{reflect.ValueOf(ctx), reflect.ValueOf(list), argument})
	if err, _ := out[0].Interface().(error); err != nil {
		fail(err)
	}
	emit(reply{OK: true}, 0)
}
