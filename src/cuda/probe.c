/* Driver probe without cudarc: dlopen libcuda, cuInit, version and device count. Lets device selection
 * report "no driver" / "driver but no GPU" / "driver too old" as one-line errors (cudarc panics when
 * libcuda is missing), and is built and testable on every machine. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef int (*cu_init_fn)(unsigned int);
typedef int (*cu_int_out_fn)(int*);

/* Returns 0 on success; 1 library not loadable; 2 symbol missing; 3 cuInit failed; 4 cuDriverGetVersion
 * failed; 5 cuDeviceGetCount failed. *cu_status holds the CUresult of the failing call. */
int hrk_cuda_probe(const char* lib, int* driver_version, int* device_count, int* cu_status, char* msg,
                   size_t msg_len) {
    *driver_version = 0;
    *device_count = 0;
    *cu_status = 0;
    if (msg_len) msg[0] = 0;
    void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char* e = dlerror();
        snprintf(msg, msg_len, "%s", e ? e : "dlopen failed");
        return 1;
    }
    cu_init_fn cu_init = (cu_init_fn)dlsym(h, "cuInit");
    cu_int_out_fn cu_version = (cu_int_out_fn)dlsym(h, "cuDriverGetVersion");
    cu_int_out_fn cu_count = (cu_int_out_fn)dlsym(h, "cuDeviceGetCount");
    if (!cu_init || !cu_version || !cu_count) {
        snprintf(msg, msg_len, "%s lacks cuInit/cuDriverGetVersion/cuDeviceGetCount", lib);
        return 2;
    }
    /* cuDriverGetVersion works before cuInit; report it even when cuInit fails. */
    int rc = cu_version(driver_version);
    if (rc != 0) {
        *cu_status = rc;
        return 4;
    }
    rc = cu_init(0);
    if (rc != 0) {
        *cu_status = rc;
        return 3;
    }
    rc = cu_count(device_count);
    if (rc != 0) {
        *cu_status = rc;
        return 5;
    }
    return 0;
}
