/*
 * llm_convert_bmrt.h: llm-convert's own declaration of the small part of Sophgo's bmlib and
 * bmruntime C API that the bmrt runner uses. Written from the documented signatures and layouts
 * (LLM-TPU support/include, see support/docs/runtime-contract.md §7) and checked against libbmrt/libbmlib of TPU-MLIR 1.30.2
 * (Linux x86-64 / aarch64, LP64). It is not the vendor header: only what we call is declared.
 *
 * bindgen turns this into Rust at build time (build.rs -> src/bmrt/ffi.rs); the libraries are
 * dlopened at run time, never linked.
 */
#ifndef LLM_CONVERT_BMRT_H
#define LLM_CONVERT_BMRT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- bmlib: device and memory */

/* Opaque device handle. */
typedef struct bm_context *bm_handle_t;

/* Return code of bmlib calls; 0 is success, anything else an error. */
typedef enum bm_status_e {
  BM_SUCCESS = 0,
  BM_ERR_DEVNOTREADY = 1,
  BM_ERR_FAILURE = 2,
  BM_ERR_TIMEOUT = 3,
  BM_ERR_PARAM = 4,
  BM_ERR_NOMEM = 5,
  BM_ERR_DATA = 6,
  BM_ERR_BUSY = 7,
  BM_ERR_NOFEATURE = 8,
  BM_NOT_SUPPORTED = 9
} bm_status_t;

/* Memory flags. The vendor type is a union of a bitfield struct and this raw word; we only
 * ever copy it around, so the raw word (same size and alignment) is all we declare. */
typedef union bm_mem_flags_u {
  unsigned int rawflags;
} bm_mem_flags_t;

/* A device memory descriptor: 24 bytes, passed BY VALUE to most calls. */
typedef struct bm_mem_desc {
  union {
    struct {
      unsigned long device_addr; /* LP64: 64-bit */
      unsigned int reserved;
      int dmabuf_fd;
    } device;
    struct {
      void *system_addr;
      unsigned int reserved0;
      int reserved1;
    } system;
  } u;
  bm_mem_flags_t flags;
  unsigned int size;
} bm_device_mem_t;

/* One device memory heap, as bm_get_stat reports it. */
typedef struct bm_heap_stat {
  unsigned int mem_total;
  unsigned int mem_avail;
  unsigned int mem_used;
} bm_heap_stat_t;

/* Device statistics (memory in MB as the demos print it; the cmodel leaves it zeroed). */
typedef struct bm_dev_stat {
  int mem_total;
  int mem_used;
  int tpu_util;
  int heap_num;
  bm_heap_stat_t heap_stat[4];
} bm_dev_stat_t;

bm_status_t bm_dev_request(bm_handle_t *handle, int devid);
void bm_dev_free(bm_handle_t handle);

bm_status_t bm_malloc_device_byte(bm_handle_t handle, bm_device_mem_t *pmem, unsigned int size);
void bm_free_device(bm_handle_t handle, bm_device_mem_t mem);
/* Fills `mem` with the `mode` bytes at `value` repeated (mode 1, 2 or 4). */
bm_status_t bm_memset_device_ext(bm_handle_t handle, void *value, int mode, bm_device_mem_t mem);

unsigned int bm_mem_get_device_size(bm_device_mem_t mem);
unsigned long long bm_mem_get_device_addr(bm_device_mem_t mem);
/* A descriptor for an existing device range (no allocation). */
bm_device_mem_t bm_mem_from_device(unsigned long long device_addr, unsigned int len);

/* Host -> device: copies the whole of `dst` (its size) from `src`. `src` is only read. */
bm_status_t bm_memcpy_s2d(bm_handle_t handle, bm_device_mem_t dst, void *src);
bm_status_t bm_memcpy_s2d_partial(bm_handle_t handle, bm_device_mem_t dst, void *src,
                                  unsigned int size);
/* Device -> host: copies the whole of `src` (its size) into `dst`. */
bm_status_t bm_memcpy_d2s(bm_handle_t handle, void *dst, bm_device_mem_t src);
bm_status_t bm_memcpy_d2s_partial(bm_handle_t handle, void *dst, bm_device_mem_t src,
                                  unsigned int size);
bm_status_t bm_memcpy_d2d_byte(bm_handle_t handle, bm_device_mem_t dst, size_t dst_offset,
                               bm_device_mem_t src, size_t src_offset, size_t size);

/* Waits for everything queued on the handle (launches are asynchronous). */
bm_status_t bm_thread_sync(bm_handle_t handle);
bm_status_t bm_get_stat(bm_handle_t handle, bm_dev_stat_t *stat);

/* ------------------------------------------------------------------------ bmruntime (bmrt) */

/* Element types of net inputs and outputs. */
typedef enum bm_data_type_e {
  BM_FLOAT32 = 0,
  BM_FLOAT16 = 1,
  BM_INT8 = 2,
  BM_UINT8 = 3,
  BM_INT16 = 4,
  BM_UINT16 = 5,
  BM_INT32 = 6,
  BM_UINT32 = 7,
  BM_BFLOAT16 = 8,
  BM_INT4 = 9,
  BM_UINT4 = 10
} bm_data_type_t;

/* Tensor store mode; 0 (1N) is the only one LLM nets use. */
typedef enum bm_store_mode_e {
  BM_STORE_1N = 0,
  BM_STORE_2N = 1,
  BM_STORE_4N = 2
} bm_store_mode_t;

/* bmrt_set_flags bits. SHARE_MEM: nets share one neuron (activation) area. */
#define BM_RUNTIME_SHARE_MEM 1
#define BM_RUNTIME_CHECK_MEM 2

/* bm_net_info_t.addr_mode: IO_ALONE nets get IO memory of their own (the KV cache lives there). */
#define BM_ADDR_MODE_BASIC 0
#define BM_ADDR_MODE_IO_ALONE 1

#define BM_MAX_DIMS_NUM 8
typedef struct bm_shape_s {
  int num_dims;
  int dims[BM_MAX_DIMS_NUM];
} bm_shape_t;

/* A tensor in device memory. st_mode is missing from the reference table but present in the
 * library: bmrt_tensor_with_device writes it at offset 64, so the struct is 72 bytes. */
typedef struct bm_tensor_s {
  bm_data_type_t dtype;
  bm_shape_t shape;
  bm_device_mem_t device_mem;
  bm_store_mode_t st_mode;
} bm_tensor_t;

/* Per stage: shapes and the device memory bmrt allocated for each input and output. */
typedef struct bm_stage_info_s {
  bm_shape_t *input_shapes;
  bm_shape_t *output_shapes;
  bm_device_mem_t *input_mems;
  bm_device_mem_t *output_mems;
} bm_stage_info_t;

/* One net of a loaded bmodel; owned by the runtime (every array has input_num / output_num /
 * stage_num entries). */
typedef struct bm_net_info_s {
  const char *name;
  bool is_dynamic;
  int input_num;
  const char **input_names;
  bm_data_type_t *input_dtypes;
  float *input_scales;
  int output_num;
  const char **output_names;
  bm_data_type_t *output_dtypes;
  float *output_scales;
  int stage_num;
  bm_stage_info_t *stages;
  size_t *max_input_bytes;
  size_t *max_output_bytes;
  int *input_zero_point;
  int *output_zero_point;
  int *input_loc_devices;
  int *output_loc_devices;
  int core_num;
  int32_t addr_mode;
} bm_net_info_t;

void *bmrt_create(bm_handle_t handle);
void bmrt_destroy(void *p_bmrt);
void bmrt_set_flags(void *p_bmrt, uint32_t flags);
bool bmrt_load_bmodel(void *p_bmrt, const char *bmodel_path);

int bmrt_get_network_number(void *p_bmrt);
/* Allocates the array (free() it); the strings belong to the runtime. */
void bmrt_get_network_names(void *p_bmrt, const char ***network_names);
/* NULL when no net has that name. */
const bm_net_info_t *bmrt_get_network_info(void *p_bmrt, const char *net_name);

/* Fills `tensor` (st_mode 0); only logs when the shape does not fit the memory. */
void bmrt_tensor_with_device(bm_tensor_t *tensor, bm_device_mem_t device_mem,
                             bm_data_type_t dtype, bm_shape_t shape);
/* Asynchronous. user_mem: outputs go to the given device memory. user_stmode: honour st_mode.
 * bmrt may write the real output shapes back into output_tensors. */
bool bmrt_launch_tensor_ex(void *p_bmrt, const char *net_name, const bm_tensor_t input_tensors[],
                           int input_num, bm_tensor_t output_tensors[], int output_num,
                           bool user_mem, bool user_stmode);

/* The ABI facts the Rust side relies on, checked when bindgen parses this file. */
_Static_assert(sizeof(bm_device_mem_t) == 24, "bm_device_mem_t is 24 bytes");
_Static_assert(sizeof(bm_shape_t) == 36, "bm_shape_t is 36 bytes");
_Static_assert(offsetof(bm_tensor_t, device_mem) == 40, "bm_tensor_t.device_mem at 40");
_Static_assert(offsetof(bm_tensor_t, st_mode) == 64, "bm_tensor_t.st_mode at 64");
_Static_assert(sizeof(bm_tensor_t) == 72, "bm_tensor_t is 72 bytes");
_Static_assert(sizeof(bm_dev_stat_t) == 64, "bm_dev_stat_t is 64 bytes");

#ifdef __cplusplus
}
#endif

#endif /* LLM_CONVERT_BMRT_H */
