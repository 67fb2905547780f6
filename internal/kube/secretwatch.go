package kube

import (
	"context"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// watchSecret calls f with Secret ns/name each time the watch (re)starts
// and whenever it changes (nil when it is missing or deleted), until ctx
// is done. The API server ending the watch, or an error, restarts it with
// a fresh read after a pause, so no change is missed.
func watchSecret(ctx context.Context, client kubernetes.Interface, ns, name string, log *slog.Logger, f func(*corev1.Secret)) error {
	api := client.CoreV1().Secrets(ns)
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	for ctx.Err() == nil {
		err := func() error {
			list, err := api.List(ctx, metav1.ListOptions{FieldSelector: sel})
			if err != nil {
				return err
			}
			if len(list.Items) == 1 {
				f(&list.Items[0])
			} else {
				f(nil)
			}
			w, err := api.Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: list.ResourceVersion})
			if err != nil {
				return err
			}
			defer w.Stop()
			for ev := range w.ResultChan() {
				switch ev.Type {
				case watch.Added, watch.Modified:
					if s, ok := ev.Object.(*corev1.Secret); ok {
						f(s)
					}
				case watch.Deleted:
					f(nil)
				case watch.Error:
					return apierrors.FromObject(ev.Object)
				}
			}
			return nil
		}()
		if err != nil && ctx.Err() == nil {
			log.Warn("watch secret; starting again", "secret", ns+"/"+name, "error", err)
		}
		select { // do not spin if the API server keeps ending the watch
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return nil
}
