/* A minimal NVTX tool: loaded through NVTX_INJECTION64_PATH as Nsight Systems would be, it writes
 * every range push and pop (domain, message) to the file named by FEDBRB_NVTX_LOG, one line each:
 *   push<TAB>domain<TAB>message   /   pop<TAB>domain
 * so the GPU check can list the ranges a round emits without nsys. Build:
 *   gcc -shared -fPIC -O2 -I$CUDA_HOME/include nvtx_collector.c -o libnvtx_collector.so -lpthread
 */
#define NVTX_NO_IMPL
#include <nvtx3/nvToolsExt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct nvtxDomainRegistration_st {
  char* name;
};
struct nvtxStringRegistration_st {
  char* text;
};

static FILE* out;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static const char* domain_name(nvtxDomainHandle_t domain) { return domain ? domain->name : "default"; }

static const char* message_of(const nvtxEventAttributes_t* attr) {
  if (!attr) return "";
  switch (attr->messageType) {
    case NVTX_MESSAGE_TYPE_ASCII: return attr->message.ascii ? attr->message.ascii : "";
    case NVTX_MESSAGE_TYPE_REGISTERED: return attr->message.registered ? attr->message.registered->text : "";
    case NVTX_MESSAGE_TYPE_UNICODE: return "<unicode message>";
    default: return "";
  }
}

static void record(const char* kind, const char* domain, const char* message) {
  pthread_mutex_lock(&lock);
  if (message) fprintf(out, "%s\t%s\t%s\n", kind, domain, message);
  else fprintf(out, "%s\t%s\n", kind, domain);
  fflush(out);
  pthread_mutex_unlock(&lock);
}

static nvtxDomainHandle_t NVTX_API domain_create(const char* name) {
  nvtxDomainHandle_t d = malloc(sizeof *d);
  d->name = strdup(name ? name : "");
  return d;
}

static nvtxStringHandle_t NVTX_API register_string(nvtxDomainHandle_t domain, const char* text) {
  (void)domain;
  nvtxStringHandle_t s = malloc(sizeof *s);
  s->text = strdup(text ? text : "");
  return s;
}

static int NVTX_API domain_push(nvtxDomainHandle_t domain, const nvtxEventAttributes_t* attr) {
  record("push", domain_name(domain), message_of(attr));
  return 0;
}

static int NVTX_API domain_pop(nvtxDomainHandle_t domain) {
  record("pop", domain_name(domain), NULL);
  return 0;
}

static int NVTX_API push_ex(const nvtxEventAttributes_t* attr) { return domain_push(NULL, attr); }

static int NVTX_API push_a(const char* message) {
  record("push", "default", message ? message : "");
  return 0;
}

static int NVTX_API pop(void) { return domain_pop(NULL); }

static int install(const NvtxExportTableCallbacks* callbacks, NvtxCallbackModule module, unsigned int id,
                   NvtxFunctionPointer fn) {
  NvtxFunctionTable table = 0;
  unsigned int size = 0;
  if (!callbacks->GetModuleFunctionTable(module, &table, &size) || !table || id >= size) return 0;
  *table[id] = fn;
  return 1;
}

int NVTX_API InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get_export_table) {
  const char* path = getenv("FEDBRB_NVTX_LOG");
  const NvtxExportTableCallbacks* callbacks = get_export_table(NVTX_ETID_CALLBACKS);
  if (!path || !callbacks || !(out = fopen(path, "w"))) return 0;
  return install(callbacks, NVTX_CB_MODULE_CORE, NVTX_CBID_CORE_RangePushEx, (NvtxFunctionPointer)push_ex) &&
         install(callbacks, NVTX_CB_MODULE_CORE, NVTX_CBID_CORE_RangePushA, (NvtxFunctionPointer)push_a) &&
         install(callbacks, NVTX_CB_MODULE_CORE, NVTX_CBID_CORE_RangePop, (NvtxFunctionPointer)pop) &&
         install(callbacks, NVTX_CB_MODULE_CORE2, NVTX_CBID_CORE2_DomainCreateA, (NvtxFunctionPointer)domain_create) &&
         install(callbacks, NVTX_CB_MODULE_CORE2, NVTX_CBID_CORE2_DomainRegisterStringA,
                 (NvtxFunctionPointer)register_string) &&
         install(callbacks, NVTX_CB_MODULE_CORE2, NVTX_CBID_CORE2_DomainRangePushEx, (NvtxFunctionPointer)domain_push) &&
         install(callbacks, NVTX_CB_MODULE_CORE2, NVTX_CBID_CORE2_DomainRangePop, (NvtxFunctionPointer)domain_pop);
}
