// fake-gpu-plugin is a kubelet device plugin for the local real node: it advertises COUNT fake
// devices of RESOURCE (nvidia.com/gpu) through the kubelet's device-plugin gRPC API (v1beta1),
// so the scheduler and the kubelet account for and allocate them exactly as on a GPU node.
// There is no GPU: Allocate only hands the container NVIDIA_VISIBLE_DEVICES naming its devices.
// Go, because k8s.io/kubelet ships the API's generated gRPC code at the pinned Kubernetes version.
//
//	fake-gpu-plugin --device-plugin-dir KUBELET_ROOT/device-plugins --count 8
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

type fakeGPUPlugin struct {
	pluginapi.UnimplementedDevicePluginServer
	devices []*pluginapi.Device
	stop    chan struct{}
}

func (p *fakeGPUPlugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

// ListAndWatch sends the device list once; the fake devices never change health.
func (p *fakeGPUPlugin) ListAndWatch(_ *pluginapi.Empty, stream pluginapi.DevicePlugin_ListAndWatchServer) error {
	if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: p.devices}); err != nil {
		return err
	}
	select {
	case <-stream.Context().Done():
	case <-p.stop:
	}
	return nil
}

func (p *fakeGPUPlugin) Allocate(_ context.Context, request *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	response := &pluginapi.AllocateResponse{}
	for _, container := range request.ContainerRequests {
		response.ContainerResponses = append(response.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"NVIDIA_VISIBLE_DEVICES": strings.Join(container.DevicesIds, ",")},
		})
	}
	return response, nil
}

func (p *fakeGPUPlugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

func (p *fakeGPUPlugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return &pluginapi.PreferredAllocationResponse{}, nil
}

// serveAndRegister serves the plugin on its socket and registers it with the kubelet. It returns
// the server, to be stopped when the kubelet forgets the plugin (its socket is removed).
func serveAndRegister(dir, socketName, resource string, plugin *fakeGPUPlugin) (*grpc.Server, error) {
	socket := filepath.Join(dir, socketName)
	_ = os.Remove(socket)
	listener, err := net.Listen("unix", socket)
	if err != nil {
		return nil, err
	}
	server := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(server, plugin)
	go func() { _ = server.Serve(listener) }()

	connection, err := grpc.NewClient("unix://"+filepath.Join(dir, "kubelet.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		server.Stop()
		return nil, err
	}
	defer connection.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(connection).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     socketName,
		ResourceName: resource,
	})
	if err != nil {
		server.Stop()
		return nil, fmt.Errorf("registering with the kubelet: %w", err)
	}
	return server, nil
}

func main() {
	dir := flag.String("device-plugin-dir", pluginapi.DevicePluginPath, "the kubelet's device-plugins folder (holds kubelet.sock)")
	count := flag.Int("count", 8, "how many fake devices to advertise")
	resource := flag.String("resource-name", "nvidia.com/gpu", "the extended resource the devices provide")
	socketName := flag.String("socket-name", "qwen-fake-gpu.sock", "the plugin's socket file in the device-plugins folder")
	flag.Parse()

	plugin := &fakeGPUPlugin{stop: make(chan struct{})}
	for i := 0; i < *count; i++ {
		plugin.devices = append(plugin.devices, &pluginapi.Device{ID: fmt.Sprintf("fake-gpu-%d", i), Health: pluginapi.Healthy})
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)

	var server *grpc.Server
	socket := filepath.Join(*dir, *socketName)
	for {
		// A restarted kubelet wipes the folder: the plugin notices its socket is gone and registers again.
		if _, err := os.Stat(socket); server == nil || err != nil {
			if server != nil {
				log.Printf("socket %s is gone (kubelet restarted?): registering again", socket)
				close(plugin.stop)
				server.Stop()
				plugin.stop = make(chan struct{})
				server = nil
			}
			var err error
			if server, err = serveAndRegister(*dir, *socketName, *resource, plugin); err != nil {
				log.Printf("not registered yet: %v", err)
				server = nil
			} else {
				log.Printf("registered %d devices of %s with the kubelet", *count, *resource)
			}
		}
		select {
		case <-signals:
			if server != nil {
				server.Stop()
			}
			_ = os.Remove(socket)
			return
		case <-time.After(time.Second):
		}
	}
}
